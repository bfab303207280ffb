//! Transfer plans: what a dry run promises is exactly what the run does, item for item;
//! invalid plans are refused naming the field; delete and replace.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::TestApp;
use offboard::crm::seed::SeedOptions;

/// Ids of the user's items of one table within a scope, oldest first.
async fn items(app: &TestApp, table: &str, condition: &str, owner: i64) -> Vec<i64> {
    let sql = format!(
        "SELECT id FROM crm.{table} WHERE owner_id = $1 AND {condition} ORDER BY created_at, id"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(owner).fetch_all(&app.pool).await.unwrap()
}

async fn owners(app: &TestApp, table: &str, ids: &[i64]) -> BTreeMap<i64, i64> {
    let sql = format!("SELECT id, owner_id FROM crm.{table} WHERE id = ANY ($1)");
    let rows: Vec<(i64, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(ids).fetch_all(&app.pool).await.unwrap();
    rows.into_iter().collect()
}

/// The owner the spec gives the item at `position`, written out independently of the
/// library: ratio walks the weights cyclically; hardcoded hands out counts in order.
fn expected_ratio(weights: &[(i64, u64)], position: usize) -> i64 {
    let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
    let mut offset = position as u64 % cycle;
    for (user, weight) in weights {
        if offset < *weight {
            return *user;
        }
        offset -= weight;
    }
    unreachable!()
}

fn expected_hardcoded(counts: &[(i64, u64)], position: usize, leaver: i64) -> i64 {
    let mut offset = position as u64;
    for (user, count) in counts {
        if offset < *count {
            return *user;
        }
        offset -= count;
    }
    leaver
}

fn promised(dry_run: &Value, item: &str) -> (BTreeMap<i64, i64>, i64) {
    let entry = &dry_run["items"][item];
    let targets = entry["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["user_id"].as_i64().unwrap(), t["count"].as_i64().unwrap()))
        .collect();
    (targets, entry["stays"].as_i64().unwrap())
}

fn counted(owners: &BTreeMap<i64, i64>, leaver: i64) -> (BTreeMap<i64, i64>, i64) {
    let mut by_owner = BTreeMap::new();
    let mut stays = 0;
    for owner in owners.values() {
        if *owner == leaver {
            stays += 1;
        } else {
            *by_owner.entry(*owner).or_insert(0) += 1;
        }
    }
    (by_owner, stays)
}

#[sqlx::test]
async fn a_dry_run_and_the_run_agree_item_for_item_on_a_mixed_plan(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_REASSIGN_BATCH", "7")],
        SeedOptions { users: 8, items_per_user: 200, seed: 3 },
    )
    .await;
    let (leaver, a, b, c) = (app.regular(0), app.regular(1), app.regular(2), app.regular(3));
    let deal_weights = [(a, 2u64), (b, 1), (c, 0)];
    let lead_weights = [(b, 1u64), (c, 1)];
    let activity_counts = [(c, 5u64), (a, 3)];
    let plan = json!({
        "default": {"mode": "single", "targets": [{"user_id": a}]},
        "deals": {"mode": "ratio", "scope": "all", "targets": [
            {"user_id": a, "weight": 2}, {"user_id": b, "weight": 1}, {"user_id": c, "weight": 0}]},
        "leads": {"mode": "ratio", "targets": [{"user_id": b, "weight": 1}, {"user_id": c, "weight": 1}]},
        "activities": {"mode": "hardcoded", "targets": [{"user_id": c, "count": 5}, {"user_id": a, "count": 3}]},
    });
    let deals = items(&app, "deals", "true", leaver).await;
    let leads = items(&app, "leads", "status = 'open'", leaver).await;
    let closed_leads = items(&app, "leads", "status <> 'open'", leaver).await;
    let activities = items(&app, "activities", "NOT done", leaver).await;
    let persons = items(&app, "persons", "true", leaver).await;
    assert!(
        deals.len() > 30 && leads.len() > 10 && activities.len() > 8,
        "the activities outnumber the hardcoded counts"
    );

    let preview_path = format!("/v1/companies/{}/users/{leaver}/preview", app.company.company_id);
    let (status, dry_run) = app.post(&preview_path, &json!({"transfer": plan})).await;
    assert_eq!(status, StatusCode::OK, "{dry_run}");
    // The dry run changed nothing.
    assert_eq!(items(&app, "deals", "true", leaver).await, deals);

    app.enqueue(&app.deactivation(leaver, plan)).await;
    app.drain().await;

    let deal_owners = owners(&app, "deals", &deals).await;
    for (position, id) in deals.iter().enumerate() {
        assert_eq!(
            deal_owners[id],
            expected_ratio(&deal_weights, position),
            "deal at position {position}"
        );
    }
    let lead_owners = owners(&app, "leads", &leads).await;
    for (position, id) in leads.iter().enumerate() {
        assert_eq!(
            lead_owners[id],
            expected_ratio(&lead_weights, position),
            "lead at position {position}"
        );
    }
    // Closed leads are out of the `open` scope and stay.
    assert!(owners(&app, "leads", &closed_leads).await.values().all(|o| *o == leaver));
    let activity_owners = owners(&app, "activities", &activities).await;
    for (position, id) in activities.iter().enumerate() {
        assert_eq!(
            activity_owners[id],
            expected_hardcoded(&activity_counts, position, leaver),
            "activity {position}"
        );
    }
    assert!(
        owners(&app, "persons", &persons).await.values().all(|o| *o == a),
        "the default rule moved contacts"
    );

    // What the dry run promised, per target and what stays, is what happened.
    for (item, owners) in
        [("deals", &deal_owners), ("leads", &lead_owners), ("activities", &activity_owners)]
    {
        let (targets, stays) = promised(&dry_run, item);
        let (got, got_stays) = counted(owners, leaver);
        assert_eq!(stays, got_stays, "{item} stays");
        for (user, count) in targets {
            assert_eq!(got.get(&user).copied().unwrap_or(0), count, "{item} to user {user}");
        }
    }
    assert_eq!(promised(&dry_run, "deals").0[&c], 0, "weight 0 receives nothing");
    assert_eq!(promised(&dry_run, "activities").1, activities.len() as i64 - 8);
}

#[sqlx::test]
async fn reassignment_progress_is_visible_and_batches_are_bounded(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_REASSIGN_BATCH", "25")],
        SeedOptions { users: 5, items_per_user: 2_000, seed: 4 },
    )
    .await;
    let leaver = app.regular(0);
    let deals = items(&app, "deals", "true", leaver).await.len() as i64;
    app.enqueue(&app.deactivation(leaver, json!({"deals": {"mode": "single", "scope": "all", "targets": [{"user_id": app.regular(1)}]}}))).await;

    // Record the deals step's committed progress as the drain runs, from a second task.
    let pool = app.pool.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..20_000 {
            let row: Option<(i64, Option<i64>, String)> = sqlx::query_as(
                "SELECT done, total, status FROM offboard.steps WHERE name = 'reassign_deals'",
            )
            .fetch_optional(&pool)
            .await
            .unwrap();
            if let Some((done, _, status)) = row {
                if !seen.contains(&done) {
                    seen.push(done);
                }
                if status == "succeeded" {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        seen
    });
    app.drain().await;
    let seen = watcher.await.unwrap();
    // Every committed value of `done` is a whole number of batches (or the end).
    assert!(seen.iter().all(|d| d % 25 == 0 || *d == deals), "{seen:?}");
    assert!(seen.iter().any(|d| *d > 0 && *d < deals), "progress was visible mid-way: {seen:?}");
    let (done, total): (i64, i64) =
        sqlx::query_as("SELECT done, total FROM offboard.steps WHERE name = 'reassign_deals'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((done, total), (deals, deals));
}

#[sqlx::test]
async fn invalid_plans_are_refused_naming_the_field_and_nothing_is_enqueued(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (leaver, ok) = (app.regular(0), app.regular(1));
    // A target that is being offboarded itself.
    app.enqueue(&app.deactivation(app.regular(2), json!({}))).await;
    let leaving = app.regular(2);
    let cases = [
        (
            json!({"deals": {"mode": "ratio", "targets": [{"user_id": ok, "weight": 0}]}}),
            "transfer.deals.targets",
        ),
        (
            json!({"deals": {"mode": "ratio", "targets": [{"user_id": ok, "weight": -1}]}}),
            "transfer.deals.targets[0].weight",
        ),
        (
            json!({"activities": {"mode": "hardcoded", "targets": [{"user_id": ok, "count": -3}]}}),
            "transfer.activities.targets[0].count",
        ),
        (json!({"widgets": {"mode": "single", "targets": [{"user_id": ok}]}}), "transfer.widgets"),
        (
            json!({"default": {"mode": "single", "targets": [{"user_id": 999_999}]}}),
            "transfer.default.targets[0].user_id",
        ),
        (
            json!({"leads": {"mode": "single", "targets": [{"user_id": leaving}]}}),
            "transfer.leads.targets[0].user_id",
        ),
        (
            json!({"leads": {"mode": "single", "targets": [{"replacement": true}]}}),
            "transfer.leads.targets[0].replacement",
        ),
    ];
    for (plan, field) in cases {
        let (status, err) =
            app.post("/v1/offboardings", &app.deactivation(leaver, plan.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{plan}: {err}");
        assert_eq!(err["error"]["field"], field, "{plan}: {err}");
        assert!(err["error"]["message"].as_str().unwrap().starts_with(field), "{err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
    // The dry run refuses the same way.
    let (status, err) = app
        .post(
            &format!("/v1/companies/{}/users/{leaver}/preview", app.company.company_id),
            &json!({"transfer": {"deals": {"mode": "single", "targets": [{"user_id": leaving}]}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        err["error"]["message"],
        format!("transfer.deals.targets[0].user_id: user {leaving} is being offboarded")
    );
}

#[sqlx::test]
async fn the_preview_lists_what_the_user_owns(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let user = app.company.admin_ids[1];
    let (status, preview) =
        app.get(&format!("/v1/companies/{}/users/{user}/preview", app.company.company_id)).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let open: i64 = app
        .count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'", user)
        .await;
    let all: i64 = app.count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1", user).await;
    assert_eq!(preview["items"]["deals"], json!({"open": open, "all": all}));
    assert_eq!(preview["syncs"]["count"], 4);
    assert_eq!(preview["is_admin"], true);
    assert!(
        preview["apps"]["shared_company_wide"].as_i64().unwrap() >= 4,
        "admins see the shared apps"
    );
    assert_eq!(
        preview["webhooks"],
        app.count_for("SELECT count(*) FROM crm.webhooks WHERE created_by = $1", user).await
    );
    assert_eq!(preview["private_emails"], 3);
    assert!(!preview["assignment_rules_naming_user"].as_array().unwrap().is_empty());
    assert_eq!(preview["automations"]["naming_user"].as_array().unwrap().len(), 1);
    let (status, _) =
        app.get(&format!("/v1/companies/{}/users/424242/preview", app.company.company_id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[sqlx::test]
async fn delete_and_replace_creates_a_replacement_who_inherits_the_seat_and_the_items(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let leaver = app.regular(0);
    let seats_held = app.count("SELECT count(*) FROM crm.users WHERE holds_seat").await;
    let open_deals = app
        .count_for("SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'", leaver)
        .await;
    let body = json!({
        "company_id": app.company.company_id, "user_id": leaver, "actor_user_id": app.admin(),
        "action": "deactivate_and_delete",
        "replacement": {"first_name": "Nora", "last_name": "Quill", "email": "Nora.Quill@new.example"},
        "transfer": {"default": {"mode": "single", "targets": [{"replacement": true}]}},
    });
    let id = app.enqueue(&body).await;
    app.drain().await;
    let run = app.run(id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    let replacement: (i64, String, bool) = sqlx::query_as(
        "SELECT id, status, holds_seat FROM crm.users WHERE email = 'nora.quill@new.example'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((replacement.1.as_str(), replacement.2), ("active", true));
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.deals WHERE owner_id = $1 AND status = 'open'",
            replacement.0
        )
        .await,
        open_deals
    );
    // The seat moved: as many seats are held as before.
    assert_eq!(app.count("SELECT count(*) FROM crm.users WHERE holds_seat").await, seats_held);
    assert_eq!(
        app.count_for(
            "SELECT count(*) FROM crm.users WHERE id = $1 AND status = 'deleted'",
            leaver
        )
        .await,
        1
    );
    // The ledger keeps the replacement's id, not its name or email.
    let stored: Value = sqlx::query_scalar("SELECT to_jsonb(r) FROM offboard.runs r WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!stored.to_string().to_lowercase().contains("nora"), "{stored}");

    // A replacement email already in the company is refused, and nothing is created.
    let users = app.count("SELECT count(*) FROM crm.users").await;
    let again = json!({
        "company_id": app.company.company_id, "user_id": app.regular(1), "actor_user_id": app.admin(),
        "action": "deactivate",
        "replacement": {"first_name": "N", "last_name": "Q", "email": "NORA.quill@new.example"},
    });
    let (status, err) = app.post("/v1/offboardings", &again).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "email_taken");
    assert_eq!(err["error"]["field"], "replacement.email");
    assert_eq!(app.count("SELECT count(*) FROM crm.users").await, users);
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 1);
}
