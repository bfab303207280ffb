use serde_json::json;

use super::*;

fn scheduled(at: Value) -> Result<OffboardingRequest, FieldError> {
    let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap().to_utc();
    OffboardingRequest::parse_at(
        &json!({"company_id": 1, "user_id": 2, "actor_user_id": 3, "action": "deactivate",
                "effective_at": at}),
        now,
    )
}

#[test]
fn effective_at_is_a_future_rfc3339_time_at_most_366_days_ahead() {
    let at = scheduled(json!("2026-12-02T11:00:00+01:00")).unwrap_err();
    assert_eq!((at.field.as_str(), at.message.as_str()), ("effective_at", "must be in the future"));
    let ok = scheduled(json!("2026-12-02T10:00:01Z")).unwrap();
    assert_eq!(ok.effective_at.unwrap().to_rfc3339(), "2026-12-02T10:00:01+00:00");
    assert!(scheduled(json!("2027-12-03T10:00:00Z")).is_ok());
    assert_eq!(scheduled(json!("2027-12-03T10:00:01Z")).unwrap_err().field, "effective_at");
    for bad in [json!("tomorrow"), json!("2026-12-24"), json!(1_800_000_000)] {
        assert_eq!(scheduled(bad).unwrap_err().field, "effective_at");
    }
    assert_eq!(scheduled(Value::Null).unwrap().effective_at, None);
}

#[test]
fn a_minimal_deactivation_parses() {
    let r = OffboardingRequest::parse(&json!({
        "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "deactivate"
    }))
    .unwrap();
    assert_eq!(r.action, Action::Deactivate);
    assert!(r.transfer.is_empty());
}

#[test]
fn shape_errors_name_the_field() {
    let base = json!({"company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "deactivate"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        OffboardingRequest::parse(&b).unwrap_err().field
    };
    assert_eq!(with("user_id", json!("5")), "user_id");
    assert_eq!(with("company_id", json!(-1)), "company_id");
    assert_eq!(with("action", json!("fire")), "action");
    assert_eq!(with("colour", json!("red")), "colour");
    assert_eq!(with("display_name", json!("X")), "display_name");
    assert_eq!(
        with("replacement", json!({"first_name": "A", "last_name": "B", "email": "nope"})),
        "replacement.email"
    );
    assert_eq!(OffboardingRequest::parse(&json!([1])).unwrap_err().field, "body");
}

#[test]
fn redact_needs_something_to_change() {
    let err = OffboardingRequest::parse(&json!({
        "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "redact"
    }))
    .unwrap_err();
    assert_eq!(err.field, "display_name");
    let ok = OffboardingRequest::parse(&json!({
        "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "redact", "remove_picture": true
    }))
    .unwrap();
    assert_eq!(ok.redaction, Some(Redaction { display_name: None, remove_picture: true }));
}

#[test]
fn transfer_is_refused_where_it_makes_no_sense() {
    let err = OffboardingRequest::parse(&json!({
        "company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "reactivate",
        "transfer": {"default": {"mode": "single", "targets": [{"user_id": 3}]}}
    }))
    .unwrap_err();
    assert_eq!(err.field, "transfer");
}

/// Every refusal of a request's parser, with the field it names and its words, pinned
/// before the parser moved from walking JSON by hand to serde (one fault per body).
#[test]
fn every_refusal_keeps_its_field_and_its_words() {
    let now = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z").unwrap().to_utc();
    let base = json!({"company_id": 1, "user_id": 5, "actor_user_id": 2, "action": "deactivate"});
    let with = |pairs: &[(&str, Value)]| {
        let mut body = base.clone();
        for (k, v) in pairs {
            body[*k] = v.clone();
        }
        body
    };
    let without = |key: &str| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().remove(key);
        body
    };
    let rule = |rule: Value| with(&[("transfer", json!({"deals": rule}))]);
    let target = |mode: &str, t: Value| rule(json!({"mode": mode, "targets": [t]}));
    let person = |first: Value, email: Value| {
        with(&[("replacement", json!({"first_name": first, "last_name": "B", "email": email}))])
    };
    let many: Vec<Value> = (1..=101).map(|i| json!({"user_id": i + 10})).collect();
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!([1]), "body", "must be a JSON object"),
        (with(&[("colour", json!("red"))]), "colour", "unknown field"),
        (without("company_id"), "company_id", "is required"),
        (with(&[("company_id", Value::Null)]), "company_id", "is required"),
        (with(&[("company_id", json!("1"))]), "company_id", "must be a positive whole number"),
        (with(&[("company_id", json!(-1))]), "company_id", "must be a positive whole number"),
        (with(&[("user_id", json!(1.5))]), "user_id", "must be a positive whole number"),
        (without("actor_user_id"), "actor_user_id", "is required"),
        (without("action"), "action", "is required"),
        (with(&[("action", json!(7))]), "action", "must be a string"),
        (with(&[("action", Value::Null)]), "action", "must be a string"),
        (
            with(&[("action", json!("fire"))]),
            "action",
            "unknown action \"fire\"; expected one of deactivate, delete, deactivate_and_delete, redact, reactivate, undo_transfer",
        ),
        (
            with(&[("action", json!("undo_transfer"))]),
            "action",
            "an undo is asked for on the run it undoes: POST /v1/offboardings/{id}/undo-transfer",
        ),
        (
            with(&[
                ("action", json!("reactivate")),
                ("transfer", json!({"default": {"mode": "single", "targets": [{"user_id": 3}]}})),
            ]),
            "transfer",
            "is not accepted for action reactivate",
        ),
        (
            with(&[("transfer", json!(7))]),
            "transfer",
            "must be an object keyed by item type or \"default\"",
        ),
        (
            with(&[(
                "transfer",
                json!({"emails": {"mode": "single", "targets": [{"user_id": 3}]}}),
            )]),
            "transfer.emails",
            "unknown item type; expected \"default\" or one of leads, deals, contacts, products, activities, projects, project_tasks",
        ),
        (
            rule(json!(5)),
            "transfer.deals",
            "must be an object like {\"mode\": \"single\", \"targets\": [...]}",
        ),
        (
            rule(json!({"mode": "single", "targets": [{"user_id": 3}], "x": 1})),
            "transfer.deals.x",
            "unknown field",
        ),
        (
            rule(json!({"targets": [{"user_id": 3}]})),
            "transfer.deals.mode",
            "is required: single, ratio or hardcoded",
        ),
        (
            rule(json!({"mode": 5, "targets": [{"user_id": 3}]})),
            "transfer.deals.mode",
            "must be a string",
        ),
        (
            rule(json!({"mode": "single", "scope": "some", "targets": [{"user_id": 3}]})),
            "transfer.deals.scope",
            "must be \"open\" or \"all\"",
        ),
        (rule(json!({"mode": "single"})), "transfer.deals.targets", "is required"),
        (
            rule(json!({"mode": "single", "targets": {}})),
            "transfer.deals.targets",
            "must be an array",
        ),
        (
            rule(json!({"mode": "single", "targets": []})),
            "transfer.deals.targets",
            "needs at least one target",
        ),
        (
            rule(json!({"mode": "ratio", "targets": many})),
            "transfer.deals.targets",
            "has 101 targets; at most 100 are allowed",
        ),
        (
            rule(json!({"mode": "split", "targets": [{"user_id": 3}]})),
            "transfer.deals.mode",
            "unknown mode \"split\"; expected single, ratio or hardcoded",
        ),
        (
            rule(json!({"mode": "single", "targets": [{"user_id": 3}, {"user_id": 4}]})),
            "transfer.deals.targets",
            "single mode takes exactly one target, got 2",
        ),
        (
            target("single", json!(5)),
            "transfer.deals.targets[0]",
            "must be an object like {\"user_id\": 12}",
        ),
        (
            target("single", json!({"user_id": 3, "weight": 1})),
            "transfer.deals.targets[0].weight",
            "unknown field",
        ),
        (
            target("ratio", json!({"user_id": 3, "weight": 1, "count": 1})),
            "transfer.deals.targets[0].count",
            "unknown field",
        ),
        (
            target("single", json!({"user_id": "3"})),
            "transfer.deals.targets[0].user_id",
            "must be a positive whole number",
        ),
        (
            target("single", json!({"user_id": Value::Null})),
            "transfer.deals.targets[0].user_id",
            "must be a positive whole number",
        ),
        (
            target("single", json!({"user_id": 3, "replacement": true})),
            "transfer.deals.targets[0]",
            "give either user_id or replacement, not both",
        ),
        (
            target("single", json!({"replacement": false})),
            "transfer.deals.targets[0].replacement",
            "must be true when given",
        ),
        (target("single", json!({})), "transfer.deals.targets[0].user_id", "is required"),
        (
            rule(
                json!({"mode": "ratio", "targets": [{"user_id": 3, "weight": 1}, {"user_id": 3, "weight": 1}]}),
            ),
            "transfer.deals.targets[1]",
            "user 3 is listed twice in this rule",
        ),
        (
            target("ratio", json!({"user_id": 3})),
            "transfer.deals.targets[0].weight",
            "is required in ratio mode",
        ),
        (
            target("ratio", json!({"user_id": 3, "weight": -1})),
            "transfer.deals.targets[0].weight",
            "must not be negative",
        ),
        (
            target("ratio", json!({"user_id": 3, "weight": 1_000_001})),
            "transfer.deals.targets[0].weight",
            "must be at most 1000000",
        ),
        (
            target("ratio", json!({"user_id": 3, "weight": "2"})),
            "transfer.deals.targets[0].weight",
            "must be a whole number",
        ),
        (
            target("hardcoded", json!({"user_id": 3, "count": 1_000_000_001})),
            "transfer.deals.targets[0].count",
            "must be at most 1000000000",
        ),
        (
            target("ratio", json!({"user_id": 3, "weight": 0})),
            "transfer.deals.targets",
            "weights must not all be zero",
        ),
        (
            with(&[("replacement", json!(5))]),
            "replacement",
            "must be an object with first_name, last_name and email",
        ),
        (
            with(&[(
                "replacement",
                json!({"first_name": "A", "last_name": "B", "email": "a@b.co", "x": 1}),
            )]),
            "replacement.x",
            "unknown field",
        ),
        (
            with(&[("replacement", json!({"first_name": "A", "last_name": "B"}))]),
            "replacement.email",
            "is required",
        ),
        (person(json!(5), json!("a@b.co")), "replacement.first_name", "must be a string"),
        (person(json!("  "), json!("a@b.co")), "replacement.first_name", "must not be empty"),
        (
            person(json!("x".repeat(101)), json!("a@b.co")),
            "replacement.first_name",
            "must be at most 100 characters",
        ),
        (
            person(json!("a\u{7}"), json!("a@b.co")),
            "replacement.first_name",
            "must not contain control characters",
        ),
        (person(json!("A"), json!("nope")), "replacement.email", "is not an email address"),
        (
            with(&[
                ("action", json!("redact")),
                ("replacement", json!({"first_name": "A", "last_name": "B", "email": "a@b.co"})),
            ]),
            "replacement",
            "is not accepted for action redact",
        ),
        (
            with(&[("display_name", json!("X"))]),
            "display_name",
            "is only accepted for action redact",
        ),
        (
            with(&[("remove_picture", json!(false))]),
            "remove_picture",
            "is only accepted for action redact",
        ),
        (
            with(&[("action", json!("redact"))]),
            "display_name",
            "redact needs a display_name, remove_picture: true, or both",
        ),
        (
            with(&[("action", json!("redact")), ("display_name", json!(5))]),
            "display_name",
            "must be a string",
        ),
        (
            with(&[("action", json!("redact")), ("remove_picture", json!("yes"))]),
            "remove_picture",
            "must be true or false",
        ),
        (
            with(&[("effective_at", json!("tomorrow"))]),
            "effective_at",
            "must be an RFC 3339 time, e.g. 2027-01-31T17:00:00Z",
        ),
        (
            with(&[("effective_at", json!("2026-12-01T10:00:00Z"))]),
            "effective_at",
            "must be in the future",
        ),
        (
            with(&[
                ("effective_at", json!("2026-12-24T10:00:00Z")),
                ("replacement", json!({"first_name": "A", "last_name": "B", "email": "a@b.co"})),
            ]),
            "effective_at",
            "a scheduled run cannot create a replacement user; create the user first and name them as a target",
        ),
    ];
    for (body, field, message) in cases {
        let err = OffboardingRequest::parse_at(&body, now).unwrap_err();
        assert_eq!((err.field.as_str(), err.message.as_str()), (field, message), "for {body}");
    }
}
