//! Who did something to a run, as its history, receipt, audit export, bulk operations and
//! batches name them. One spelling each, written and read through this type: a typo in Rust
//! fails to compile, a word PostgreSQL hands back that names no actor fails to decode.

use std::{fmt, str::FromStr};

use super::text_enum::text_enum;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::{
    Decode, Encode, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
};

text_enum! {
    /// What started a run on someone's behalf, as the run's parameters (`started_by`) and
    /// its actor (`service:<word>`) name it.
    pub enum Service("service") {
        /// An identity provider's SCIM call.
        Scim = "scim",
        /// The company's policy: a deletion scheduled after a deactivation.
        Policy = "policy",
    }
}

/// Who acted. Ids only: never a name or an email.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A user of the host app, by id (`user:<id>`): who asked for a run, who approved or
    /// rejected it.
    User(i64),
    /// offboard on someone's behalf (`service:<service>`): an identity provider through
    /// SCIM, or the company's policy; the run's `actor_user_id` is then the company's service
    /// actor or the deactivation's actor.
    Service(Service),
    /// The holder of the operators' API token (`token:operator`).
    Operator,
    /// The holder of a company's scoped operator token (`token:company-<id>`).
    CompanyToken(i64),
    /// offboard itself (`system`): a run finished, an approval expired, a cancel completed
    /// once the last running step stopped.
    System,
}

impl Actor {
    /// The operator a token names: one company's, or every company's.
    pub fn token(company_scope: Option<i64>) -> Self {
        company_scope.map_or(Actor::Operator, Actor::CompanyToken)
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Service(service) => write!(f, "service:{service}"),
            Actor::Operator => f.write_str("token:operator"),
            Actor::CompanyToken(id) => write!(f, "token:company-{id}"),
            Actor::System => f.write_str("system"),
        }
    }
}

impl FromStr for Actor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = |digits: &str| digits.parse::<i64>().ok().filter(|id| *id > 0);
        let actor = match s {
            "token:operator" => Some(Actor::Operator),
            "system" => Some(Actor::System),
            _ => s
                .strip_prefix("user:")
                .and_then(id)
                .map(Actor::User)
                .or_else(|| s.strip_prefix("token:company-").and_then(id).map(Actor::CompanyToken))
                .or_else(|| {
                    s.strip_prefix("service:").and_then(|w| w.parse().ok()).map(Actor::Service)
                }),
        };
        actor.ok_or_else(|| {
            format!(
                "unknown actor {s:?}; expected user:<id>, service:scim, service:policy, \
                 token:operator, token:company-<id> or system"
            )
        })
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let word = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        word.parse().map_err(serde::de::Error::custom)
    }
}

impl Type<Postgres> for Actor {
    fn type_info() -> PgTypeInfo {
        <String as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <String as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Actor {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Postgres>>::encode(self.to_string(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for Actor {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(<&str as Decode<Postgres>>::decode(value)?.parse()?)
    }
}

impl utoipa::PartialSchema for Actor {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^(user:[1-9][0-9]*|service:(scim|policy)|token:operator|token:company-[1-9][0-9]*|system)$"))
            .description(Some(
                "Who acted: `user:<id>` (a host-app user), `service:scim` (an identity \
                 provider), `service:policy` (the company's policy), `token:operator` or \
                 `token:company-<id>` (an operator's token), `system` (offboard itself)",
            ))
            .examples(["user:42"])
            .into()
    }
}

impl utoipa::ToSchema for Actor {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_reads_back_as_written_and_odd_words_are_refused() {
        for actor in [
            Actor::User(42),
            Actor::Service(Service::Scim),
            Actor::Service(Service::Policy),
            Actor::Operator,
            Actor::CompanyToken(7),
            Actor::System,
        ] {
            assert_eq!(actor.to_string().parse::<Actor>(), Ok(actor));
            let json = serde_json::to_value(actor).unwrap();
            assert_eq!(json, serde_json::json!(actor.to_string()));
            assert_eq!(serde_json::from_value::<Actor>(json).unwrap(), actor);
        }
        assert_eq!(Actor::token(None).to_string(), "token:operator");
        assert_eq!(Actor::token(Some(7)).to_string(), "token:company-7");
        for odd in [
            "user:",
            "user:0",
            "user:-3",
            "user:x",
            "operator",
            "service:okta",
            "service:",
            "token:company-",
        ] {
            assert!(odd.parse::<Actor>().is_err(), "{odd}");
        }
    }
}
