//! SCIM 2.0 (RFC 7643/7644) at `/scim/v2`: identity providers (Okta, Microsoft Entra ID)
//! provision the CRM's users and offboard them. A deactivation (`active: false`), a
//! reactivation and a DELETE become runs through the same enqueue path a host request
//! takes ([`super::enqueue::submit`]), with the company's offboarding policy (default
//! plan, what DELETE does) and its service actor; this module never writes a run itself.
//!
//! Every answer is `application/scim+json`; errors are SCIM `Error` messages. A token must
//! be scoped to one company (`TOKEN@COMPANY_ID`): the company is the token's.
//!
//! Users' names, userNames and emails go back to the identity provider that sent them and
//! nowhere else: never into logs or error details.

mod discovery;
mod filter;
mod patch;
mod resource;
mod users;

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{AppState, auth::Caller, error::ApiError};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// Read-only: the user's current offboarding run (`runId`, `runAction`, `runStatus`),
/// returned when asked for (`?attributes=urn:…:Offboarding`).
pub const OFFBOARDING_SCHEMA: &str = "urn:offboard:params:scim:schemas:extension:2.0:Offboarding";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const CONTENT_TYPE: &str = "application/scim+json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ServiceProviderConfig", get(discovery::service_provider_config))
        .route("/ResourceTypes", get(discovery::resource_types))
        .route("/ResourceTypes/{id}", get(discovery::resource_type))
        .route("/Schemas", get(discovery::schemas))
        .route("/Schemas/{id}", get(discovery::schema))
        .route("/Users", get(users::list).post(users::create))
        .route(
            "/Users/{id}",
            get(users::show).put(users::replace).patch(users::modify).delete(users::remove),
        )
        .route("/.search", axum::routing::post(not_implemented))
        .fallback(|| async { ScimError::not_found("no such SCIM endpoint") })
        .method_not_allowed_fallback(|| async {
            ScimError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                "method not allowed on this endpoint",
            )
        })
}

/// Searching several resource types at once (`POST /.search` at the root) is not offered;
/// `POST /Users/.search` is not either: `GET /Users?filter=` does it.
async fn not_implemented() -> ScimError {
    ScimError::new(
        StatusCode::NOT_IMPLEMENTED,
        None,
        "POST /.search is not supported; use GET /Users?filter=",
    )
}

/// A SCIM `Error` message: `status` as a string, `scimType` where RFC 7644 §3.12 defines
/// one. Details name ids and attributes, never their values.
#[derive(Debug)]
pub struct ScimError {
    pub status: StatusCode,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(
        status: StatusCode,
        scim_type: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Self {
        Self { status, scim_type, detail: detail.into() }
    }

    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some(scim_type), detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, None, detail)
    }

    pub fn conflict(scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, scim_type, detail)
    }
}

impl From<ApiError> for ScimError {
    /// The API's errors keep their status and message (ids only, by the API's own rule).
    fn from(err: ApiError) -> Self {
        let scim_type = match err.status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Some("invalidValue"),
            _ => None,
        };
        let status = match err.status {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            s => s,
        };
        Self::new(status, scim_type, err.message)
    }
}

impl From<sqlx::Error> for ScimError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::from(err).into()
    }
}

impl IntoResponse for ScimError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.as_u16().to_string(),
            "detail": self.detail,
        });
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = json!(scim_type);
        }
        let mut response = scim_json(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A SCIM response body.
pub fn scim_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        serde_json::to_string(body).expect("JSON values serialize"),
    )
        .into_response()
}

/// The caller of a SCIM endpoint: a bearer token scoped to one company.
#[derive(Debug, Clone, Copy)]
pub struct ScimCaller {
    pub company_id: i64,
}

impl FromRequestParts<AppState> for ScimCaller {
    type Rejection = ScimError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ScimError> {
        let caller = Caller::from_request_parts(parts, state).await.map_err(|_| {
            ScimError::new(StatusCode::UNAUTHORIZED, None, "a valid bearer token is required")
        })?;
        match caller.company_scope {
            Some(company_id) => Ok(ScimCaller { company_id }),
            None => Err(ScimError::new(
                StatusCode::FORBIDDEN,
                None,
                "SCIM needs a token scoped to one company (TOKEN@COMPANY_ID in OFFBOARD_API_TOKENS)",
            )),
        }
    }
}

/// Where the SCIM endpoints are, as the client reached them (for `meta.location`).
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| matches!(*p, "http" | "https"))
        .unwrap_or("http");
    format!("{scheme}://{host}/scim/v2")
}

/// A SCIM request body: `application/scim+json` or `application/json`, at most the API's
/// body limit, a JSON object.
pub struct ScimBody(pub serde_json::Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for ScimBody {
    type Rejection = ScimError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ScimError> {
        let json_like = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .is_none_or(|m| m == "application/json" || m == CONTENT_TYPE);
        if !json_like {
            return Err(ScimError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                "send the body as application/scim+json or application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ScimError::new(StatusCode::PAYLOAD_TOO_LARGE, None, "the body is too large")
            } else {
                ScimError::bad("invalidSyntax", "the body could not be read")
            }
        })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(ScimBody(map)),
            Ok(_) => Err(ScimError::bad("invalidSyntax", "the body must be a JSON object")),
            Err(_) => Err(ScimError::bad("invalidSyntax", "the body is not valid JSON")),
        }
    }
}
