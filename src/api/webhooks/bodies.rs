//! The bodies of the endpoints' requests, as serde reads them.

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::wire;

/// The body of `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    #[serde(default, deserialize_with = "some_positive_integer")]
    #[schema(value_type = i64, minimum = 1, required = true)]
    pub company_id: Option<i64>,
    /// `https` and a public address (plain http and private addresses only where
    /// `OFFBOARD_WEBHOOK_ALLOW_PRIVATE=1`).
    #[serde(deserialize_with = "wire::string")]
    #[schema(example = "https://host.example.com/hooks/offboard", max_length = 2048)]
    pub url: String,
    /// Event types to receive; absent or empty means all.
    #[serde(default, deserialize_with = "events")]
    pub events: Option<Vec<String>>,
    /// A label for people: at most 500 characters, no control characters.
    #[serde(default, deserialize_with = "wire::optional_string")]
    #[schema(max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
}

/// The body of `PATCH /v1/webhook-endpoints/{id}`; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    #[serde(default, deserialize_with = "wire::some_string")]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// `null` or empty: every event type.
    #[serde(default, deserialize_with = "some_events")]
    #[schema(value_type = Option<Vec<String>>)]
    pub events: Option<Option<Vec<String>>>,
    /// `true` also clears the failing flag and the breaker; `false` stops deliveries.
    #[serde(default, deserialize_with = "some_boolean")]
    pub enabled: Option<bool>,
    /// `null` clears it; at most 500 characters, no control characters.
    #[serde(default, deserialize_with = "some_description")]
    #[schema(value_type = Option<String>, max_length = 500, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub description: Option<Option<String>>,
}

fn some_positive_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(d)?.as_i64() {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(D::Error::custom("must be a positive integer")),
    }
}

/// Event types; `null` is none named (all).
fn events<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let bad = || D::Error::custom("must be a list of strings");
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(list) => list
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        _ => Err(bad()),
    }
}

fn some_events<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    events(d).map(Some)
}

fn some_boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(Some(b)),
        _ => Err(D::Error::custom("must be a boolean")),
    }
}

fn some_description<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    wire::optional_string(d).map(Some)
}
