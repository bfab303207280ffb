//! Request bodies parsed by serde. A body's struct derives `Deserialize` with
//! `deny_unknown_fields`; [`from_json`] runs it through `serde_path_to_error`, so the first
//! error names its field by path (`transfer.deals.targets[1].user_id`), in the words the API
//! has always answered: each field deserializer here refuses a value with that field's own
//! message, a missing field `is required`, an unknown one `unknown field`. Rules serde
//! cannot say (ranges, one field against another) are checked on the typed struct by the
//! domain's functions.

use std::{fmt, marker::PhantomData};

use chrono::{DateTime, Utc};
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, Error as _, MapAccess, Visitor},
};
use serde_json::Value;

use super::FieldError;

/// Parses a JSON body (or a part of one: the ledger's stored plan, a batch's row) into
/// `T`. A value that is not an object is refused as `body` with `not_an_object`.
pub fn from_json<'de, T: Deserialize<'de>>(
    value: &'de Value,
    not_an_object: &str,
) -> Result<T, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new("body", not_an_object));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let err = field_error(&e);
        if err.field == "." { FieldError::new("body", err.message) } else { err }
    })
}

/// serde's error as the API's: the path names the field; serde's own wording for a missing
/// or unknown field, or a value of the wrong kind, gives way to ours.
fn field_error(err: &serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = err.path().to_string();
    let message = err.inner().to_string();
    if let Some(name) = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
        let field = if path == "." { name.to_string() } else { format!("{path}.{name}") };
        return FieldError::new(field, "is required");
    }
    if message.starts_with("unknown field `") {
        return FieldError::new(path, "unknown field");
    }
    // A visitor's `expecting` is the field's message (see [`object`]).
    let message = match message.rsplit_once(", expected ") {
        Some((kind, expected)) if kind.starts_with("invalid type: ") => expected.to_string(),
        _ => message,
    };
    FieldError::new(path, message)
}

/// A struct the API receives inside a body: it comes only from a JSON object (serde
/// would also read a struct from an array, by position); anything else is refused with
/// [`Object::NOT_AN_OBJECT`].
pub trait Object<'de>: Deserialize<'de> {
    const NOT_AN_OBJECT: &'static str;
}

/// Reads an [`Object`] (for a field: `deserialize_with = "wire::object"`).
pub fn object<'de, D: Deserializer<'de>, T: Object<'de>>(d: D) -> Result<T, D::Error> {
    ObjectSeed(PhantomData).deserialize(d)
}

/// [`object`] for an optional field: `null` or absent is `None` (with `default`).
pub fn optional_object<'de, D: Deserializer<'de>, T: Object<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    struct Optional<T>(PhantomData<T>);
    impl<'de, T: Object<'de>> Visitor<'de> for Optional<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(T::NOT_AN_OBJECT)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            object(d).map(Some)
        }
    }
    d.deserialize_option(Optional(PhantomData))
}

/// Deserializes an [`Object`]; also an element of a list or a value of a map.
pub struct ObjectSeed<T>(pub PhantomData<T>);

impl<'de, T: Object<'de>> DeserializeSeed<'de> for ObjectSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Object<'de>> Visitor<'de> for ObjectSeed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::NOT_AN_OBJECT)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

/// A leaf's value, read whole to be converted with the field's own words.
fn leaf<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Value::deserialize(d)
}

fn positive(value: &Value) -> Option<i64> {
    value.as_i64().filter(|n| *n > 0)
}

/// A required id: a positive whole number (`null` is missing).
pub fn positive_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match leaf(d)? {
        Value::Null => Err(D::Error::custom("is required")),
        v => positive(&v).ok_or_else(|| D::Error::custom("must be a positive whole number")),
    }
}

/// An id given where it may be left out, but not as `null`.
pub fn some_positive_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    positive(&leaf(d)?).map(Some).ok_or_else(|| D::Error::custom("must be a positive whole number"))
}

/// An approver's id: whatever is wrong with it, the same words.
pub fn approver_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    positive(&leaf(d)?).map(Some).ok_or_else(|| D::Error::custom(APPROVER_REQUIRED))
}

/// What an approval or a rejection without a valid `approver_user_id` is told.
pub const APPROVER_REQUIRED: &str = "is required: a positive user id";

/// A whole number (its range is the domain's to check), given but not as `null`.
pub fn some_whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    leaf(d)?.as_i64().map(Some).ok_or_else(|| D::Error::custom("must be a whole number"))
}

/// A string (its content is the domain's to check); `null` too is not one.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match leaf(d)? {
        Value::String(s) => Ok(s),
        _ => Err(D::Error::custom("must be a string")),
    }
}

/// [`string`] where it may be left out, but not given as `null`.
pub fn some_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string(d).map(Some)
}

/// [`string`] where `null` or absent is `None`.
pub fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match leaf(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(D::Error::custom("must be a string")),
    }
}

/// A yes or no where `null` or absent is `None`.
pub fn optional_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match leaf(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        _ => Err(D::Error::custom("must be true or false")),
    }
}

/// A string parsed by the type's `FromStr`, whose error is the message.
pub fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    string(d)?.parse().map_err(D::Error::custom)
}

const NOT_A_TIME: &str = "must be an RFC 3339 time, e.g. 2027-01-31T17:00:00Z";

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.to_utc())
}

/// A required RFC 3339 time (`null` is missing); how far ahead is the domain's to check.
pub fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    match leaf(d)? {
        Value::Null => Err(D::Error::custom("is required")),
        v => time(&v).ok_or_else(|| D::Error::custom(NOT_A_TIME)),
    }
}

/// An RFC 3339 time where `null` or absent is `None`.
pub fn optional_timestamp<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match leaf(d)? {
        Value::Null => Ok(None),
        v => time(&v).map(Some).ok_or_else(|| D::Error::custom(NOT_A_TIME)),
    }
}

/// Parses `value` as the field `at` of a body: errors name fields under it.
pub fn from_json_at<'de, T: Deserialize<'de>>(
    value: &'de Value,
    at: &str,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let err = field_error(&e);
        let field = if err.field == "." { at.to_string() } else { format!("{at}.{}", err.field) };
        FieldError::new(field, err.message)
    })
}

/// An optional id whose refusal says "integer" (`null` or absent is `None`).
pub fn optional_positive_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match leaf(d)? {
        Value::Null => Ok(None),
        v => positive(&v).map(Some).ok_or_else(|| D::Error::custom("must be a positive integer")),
    }
}
