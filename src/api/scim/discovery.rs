//! Discovery (RFC 7644 §4): `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`.
//! They describe what this service keeps of a user — the attributes identity providers
//! map — and its read-only offboarding extension. They need the SCIM token too (RFC 7644
//! §4 lets a provider require one).

use axum::{
    extract::Path,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde_json::{Value, json};

use super::{
    LIST_SCHEMA, OFFBOARDING_SCHEMA, ScimCaller, ScimError, USER_SCHEMA, base_url, scim_json,
};

/// Most users a page of `GET /Users` holds.
pub const MAX_RESULTS: i64 = 200;

pub async fn service_provider_config(_: ScimCaller, headers: HeaderMap) -> Response {
    let base = base_url(&headers);
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
                        "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": MAX_RESULTS},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "A bearer token scoped to one company (OFFBOARD_API_TOKENS, TOKEN@COMPANY_ID)",
                "primary": true
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{base}/ServiceProviderConfig")
            }
        }),
    )
}

fn user_resource_type(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A user of the CRM company the token is scoped to",
        "schema": USER_SCHEMA,
        // Every user resource carries the extension (empty unless its attributes are
        // asked for); a request need not.
        "schemaExtensions": [{"schema": OFFBOARDING_SCHEMA, "required": false}],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")}
    })
}

fn list(resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": resources.len(),
        "itemsPerPage": resources.len(),
        "startIndex": 1,
        "Resources": resources,
    })
}

pub async fn resource_types(_: ScimCaller, headers: HeaderMap) -> Response {
    scim_json(StatusCode::OK, &list(vec![user_resource_type(&base_url(&headers))]))
}

pub async fn resource_type(
    _: ScimCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    if id != "User" {
        return Err(ScimError::not_found("no such resource type"));
    }
    Ok(scim_json(StatusCode::OK, &user_resource_type(&base_url(&headers))))
}

fn attribute(name: &str, kind: &str, description: &str) -> Value {
    json!({
        "name": name,
        "type": kind,
        "multiValued": false,
        "description": description,
        "required": false,
        "caseExact": false,
        "mutability": "readWrite",
        "returned": "default",
        "uniqueness": "none"
    })
}

fn user_schema(base: &str) -> Value {
    let mut user_name = attribute(
        "userName",
        "string",
        "Unique in the company, case-insensitively; the email when the CRM user has no userName",
    );
    user_name["required"] = json!(true);
    user_name["uniqueness"] = json!("server");
    let mut external_id =
        attribute("externalId", "string", "The identity provider's id of the user");
    external_id["caseExact"] = json!(true);
    let mut name = attribute("name", "complex", "The user's name");
    name["subAttributes"] = json!([
        attribute("givenName", "string", "Given name"),
        attribute("familyName", "string", "Family name"),
    ]);
    let mut emails = attribute(
        "emails",
        "complex",
        "The user's email: one is kept, the primary one (else the first)",
    );
    emails["multiValued"] = json!(true);
    let mut kind = attribute("type", "string", "work, home or other");
    kind["canonicalValues"] = json!(["work", "home", "other"]);
    emails["subAttributes"] = json!([
        attribute("value", "string", "The email address"),
        kind,
        attribute("primary", "boolean", "Whether this is the primary email"),
    ]);
    let mut active = attribute(
        "active",
        "boolean",
        "false deactivates the user through an offboarding run with the company's policy; true reactivates a deactivated user",
    );
    // Every CRM user is active or not: the attribute always has a value (a create
    // without it makes an active user).
    active["required"] = json!(true);
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA,
        "name": "User",
        "description": "A user of the CRM",
        "attributes": [
            user_name,
            name,
            attribute("displayName", "string", "The name the CRM shows"),
            emails,
            active,
            external_id,
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}")}
    })
}

fn offboarding_schema(base: &str) -> Value {
    let read_only = |name: &str, description: &str| {
        let mut a = attribute(name, "string", description);
        a["mutability"] = json!("readOnly");
        a["returned"] = json!("request");
        a["caseExact"] = json!(true);
        a
    };
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": OFFBOARDING_SCHEMA,
        "name": "Offboarding",
        "description": "The user's current offboarding run (read-only; returned when asked for with attributes=): the active one, else the latest. On every user until a PATCH remove of this URN takes it off; add or replace with {} puts it back",
        "attributes": [
            read_only("runId", "The run's id (GET /v1/offboardings/{id})"),
            read_only("runAction", "deactivate, delete, deactivate_and_delete, redact or reactivate"),
            read_only("runStatus", "queued, running, succeeded, failed, canceled, …"),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{OFFBOARDING_SCHEMA}")}
    })
}

pub async fn schemas(_: ScimCaller, headers: HeaderMap) -> Response {
    let base = base_url(&headers);
    scim_json(StatusCode::OK, &list(vec![user_schema(&base), offboarding_schema(&base)]))
}

pub async fn schema(
    _: ScimCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ScimError> {
    let base = base_url(&headers);
    match id.as_str() {
        USER_SCHEMA => Ok(scim_json(StatusCode::OK, &user_schema(&base))),
        OFFBOARDING_SCHEMA => Ok(scim_json(StatusCode::OK, &offboarding_schema(&base))),
        _ => Err(ScimError::not_found("no such schema")),
    }
}
