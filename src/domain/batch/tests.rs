//! A batch file's three formats become the same rows, and what cannot is refused by row.

use serde_json::json;

use super::*;

#[test]
fn csv_rows_become_request_bodies() {
    let csv = "company_id,user_id,action,effective_at,plan\n\
               1,17,deactivate,,policy\n\
               1,18,deactivate,2027-01-31T17:00:00Z,\"{\"\"default\"\": {\"\"mode\"\": \"\"single\"\", \"\"targets\"\": [{\"\"user_id\"\": 12}]}}\"\n\
               1,x,deactivate,,\n\
               1,19\n\
               1,20,delete,,nonsense\n";
    let parsed = parse(BatchFormat::Csv, csv.as_bytes()).unwrap();
    assert_eq!(parsed.total(), 5);
    assert_eq!(parsed.rows[0].row, 1);
    assert!(parsed.rows[0].policy_plan);
    assert_eq!(parsed.rows[0].body.get("user_id"), Some(&json!(17)));
    assert_eq!(
        parsed.rows[1].body.get("transfer"),
        Some(&json!({"default": {"mode": "single", "targets": [{"user_id": 12}]}}))
    );
    assert_eq!(parsed.rows[1].body.get("effective_at"), Some(&json!("2027-01-31T17:00:00Z")));
    assert_eq!(parsed.rows[2].body.get("user_id"), Some(&json!("x")));
    let refused: Vec<(usize, &str, Option<&str>)> =
        parsed.refused.iter().map(|r| (r.row, r.code.as_str(), r.field.as_deref())).collect();
    assert_eq!(refused, [(4, "invalid_csv", Some("row")), (5, "invalid_request", Some("plan"))]);
    assert_eq!(parsed.refused[1].company_id, Some(1));
}

#[test]
fn a_header_without_the_needed_columns_refuses_the_batch() {
    let err = parse(BatchFormat::Csv, b"company_id,action\n1,deactivate\n").unwrap_err();
    assert_eq!(err.field, "header");
    let err = parse(BatchFormat::Csv, b"company_id,user_id,action,name\n").unwrap_err();
    assert_eq!(err.field, "header");
}

#[test]
fn more_than_the_maximum_rows_refuses_the_batch() {
    let mut csv = String::from("company_id,user_id,action\n");
    for i in 0..=MAX_ROWS {
        csv.push_str(&format!("1,{},deactivate\n", i + 1));
    }
    let err = parse(BatchFormat::Csv, csv.as_bytes()).unwrap_err();
    assert_eq!(err.field, "rows");
    assert!(err.message.contains("10001"), "{}", err.message);
    let rows: Vec<Value> = (0..=MAX_ROWS).map(|i| json!({"user_id": i})).collect();
    let body = serde_json::to_vec(&json!({"rows": rows})).unwrap();
    assert_eq!(parse(BatchFormat::Json, &body).unwrap_err().field, "rows");
}

#[test]
fn ndjson_lines_are_rows_and_bad_lines_are_refused() {
    let text = "{\"company_id\": 1, \"user_id\": 2, \"action\": \"deactivate\"}\n\n{oops\n[1]\n";
    let parsed = parse(BatchFormat::Ndjson, text.as_bytes()).unwrap();
    assert_eq!(parsed.rows.len(), 1);
    let refused: Vec<(usize, &str)> =
        parsed.refused.iter().map(|r| (r.row, r.code.as_str())).collect();
    assert_eq!(refused, [(2, "invalid_json"), (3, "invalid_request")]);
}

#[test]
fn content_types_name_formats() {
    assert_eq!(BatchFormat::from_content_type("text/csv; charset=utf-8"), Some(BatchFormat::Csv));
    assert_eq!(BatchFormat::from_content_type("application/x-ndjson"), Some(BatchFormat::Ndjson));
    assert_eq!(BatchFormat::from_content_type("Application/JSON"), Some(BatchFormat::Json));
    assert_eq!(BatchFormat::from_content_type("text/plain"), None);
}

#[test]
fn a_batch_actor_that_is_not_a_positive_id_refuses_the_batch() {
    for actor in [json!([1]), json!("1"), json!(0), json!(-3), json!(1.5), json!(null)] {
        let body = json!({"rows": [{"company_id": 1, "user_id": 2, "action": "deactivate"}],
                          "actor_user_id": actor});
        let err = parse(BatchFormat::Json, body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.field, "actor_user_id", "{actor}");
    }
    let body = json!({"rows": [{"company_id": 1, "user_id": 2, "action": "deactivate"}],
                      "actor_user_id": 9});
    assert_eq!(
        parse(BatchFormat::Json, body.to_string().as_bytes()).unwrap().actor_user_id,
        Some(9)
    );
}
