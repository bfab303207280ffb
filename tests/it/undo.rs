//! Undo of a transfer: every item a run moved is in its journal; after the user is
//! reactivated (or to another user) an undo run moves back exactly the items their
//! recipients still hold, leaves and counts the others, and the preview said so first.

use std::{collections::BTreeMap, time::Instant};

use axum::http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    helpers::{DEADLINE, TestApp},
    recovery::spawn_worker,
};
use offboard::{crm::seed::SeedOptions, domain::journal::JOURNALED};

/// One journal entry: the kind, the item, the owner the run gave it to.
type Entry = (String, i64, i64);

async fn journal(app: &TestApp, run: Uuid) -> Vec<Entry> {
    sqlx::query_as(
        "SELECT j.item_type, x.item_id, x.new_owner
         FROM offboard.transfer_journal j,
              unnest(j.item_ids, j.new_owner_ids) WITH ORDINALITY AS x(item_id, new_owner, ord)
         WHERE j.run_id = $1 ORDER BY j.id, x.ord",
    )
    .bind(run)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

async fn owner_of(app: &TestApp, kind: &str, item: i64) -> Option<i64> {
    let kind = JOURNALED.iter().find(|k| k.key == kind).expect("a journaled kind");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM {} WHERE id = $1",
        kind.owner_column, kind.table
    )))
    .bind(item)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
    .flatten()
}

async fn set_owner(app: &TestApp, kind: &str, item: i64, owner: i64) {
    let kind = JOURNALED.iter().find(|k| k.key == kind).expect("a journaled kind");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET {} = $2 WHERE id = $1",
        kind.table, kind.owner_column
    )))
    .bind(item)
    .bind(owner)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// Deactivates `leaver` (deals 2:1 between a and b, everything else to a), runs it, and
/// returns the run id.
async fn deactivate(app: &TestApp, leaver: i64, a: i64, b: i64) -> Uuid {
    let plan = json!({
        "default": {"mode": "single", "scope": "all", "targets": [{"user_id": a}]},
        "deals": {"mode": "ratio", "scope": "all",
                  "targets": [{"user_id": a, "weight": 2}, {"user_id": b, "weight": 1}]}});
    let id = app.enqueue(&app.deactivation(leaver, plan)).await;
    app.drain().await;
    assert_eq!(app.run(id).await["status"], "succeeded");
    id
}

async fn reactivate(app: &TestApp, user: i64) {
    let id = app
        .enqueue(&json!({"company_id": app.company.company_id, "user_id": user,
                         "actor_user_id": app.admin(), "action": "reactivate"}))
        .await;
    app.drain().await;
    assert_eq!(app.run(id).await["status"], "succeeded");
}

#[sqlx::test]
async fn after_reactivation_the_undo_moves_back_exactly_what_the_recipients_still_hold(
    pool: PgPool,
) {
    // Small batches: the run journals many rows, the undo walks them in many batches.
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_REASSIGN_BATCH", "7")],
        SeedOptions { users: 8, items_per_user: 40, seed: 7 },
    )
    .await;
    let (leaver, a, b, c) = (app.regular(0), app.regular(1), app.regular(2), app.regular(3));
    let run = deactivate(&app, leaver, a, b).await;
    let entries = journal(&app, run).await;

    // The journal is exactly what moved: every entry's item is with its recipient, and
    // the receipt's counts add up to it.
    assert!(entries.len() > 30, "{}", entries.len());
    for (kind, item, owner) in &entries {
        assert_eq!(owner_of(&app, kind, *item).await, Some(*owner), "{kind} {item}");
    }
    let receipt = app.run(run).await["receipt"].clone();
    let reassigned: i64 = receipt["reassigned"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["moved"].as_i64().unwrap())
        .sum();
    let journaled_items = entries.iter().filter(|(k, _, _)| {
        !matches!(k.as_str(), "dashboards" | "chatbot_playbooks" | "web_forms")
    });
    assert_eq!(journaled_items.count() as i64, reassigned);
    assert!(entries.iter().any(|(k, _, _)| k == "deals"));

    // Some items change hands after the run: those are left.
    let mut changed: Vec<(String, i64)> = Vec::new();
    for (kind, item, _) in entries.iter().filter(|(k, _, o)| k == "deals" && *o == a).take(3) {
        set_owner(&app, kind, *item, c).await;
        changed.push((kind.clone(), *item));
    }
    if let Some((kind, item, _)) = entries.iter().find(|(k, _, _)| k == "contacts") {
        set_owner(&app, kind, *item, b).await;
        changed.push((kind.clone(), *item));
    }
    if let Some((kind, item, _)) = entries.iter().find(|(k, _, _)| k == "dashboards") {
        set_owner(&app, kind, *item, c).await;
        changed.push((kind.clone(), *item));
    }
    let before: BTreeMap<(String, i64), Option<i64>> = {
        let mut owners = BTreeMap::new();
        for (kind, item) in &changed {
            owners.insert((kind.clone(), *item), owner_of(&app, kind, *item).await);
        }
        owners
    };

    reactivate(&app, leaver).await;
    let (status, preview) = app.get(&format!("/v1/offboardings/{run}/undo-transfer/preview")).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["total"]["moved_by_run"], entries.len());
    assert_eq!(preview["total"]["changed_since"], changed.len());
    assert_eq!(preview["total"]["would_move_back"], entries.len() - changed.len());
    assert_eq!(preview["items"]["deals"]["changed_since"], 3);

    let (status, accepted) =
        app.post(&format!("/v1/offboardings/{run}/undo-transfer"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let undo: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();
    // Asked again while it is under way: the same run.
    let (status, again) =
        app.post(&format!("/v1/offboardings/{run}/undo-transfer"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["id"], accepted["id"]);
    assert_eq!(again["replayed"], true);

    app.drain().await;
    let undone = app.run(undo).await;
    assert_eq!(undone["status"], "succeeded", "{undone:#}");
    assert_eq!(undone["action"], "undo_transfer");

    // Item by item against the journal: back with the user, unless changed since.
    for (kind, item, _) in &entries {
        let owner = owner_of(&app, kind, *item).await;
        match before.get(&(kind.clone(), *item)) {
            Some(then) => assert_eq!(owner, *then, "{kind} {item} changed since: left"),
            None => assert_eq!(owner, Some(leaver), "{kind} {item} moved back"),
        }
    }
    // The receipt counts what the preview promised, kind by kind.
    let counts = &undone["receipt"]["undo_transfer"];
    assert_eq!(counts["undo_of"], run.to_string());
    assert_eq!(counts["to_user_id"], leaver);
    assert_eq!(counts["moved_back_total"], preview["total"]["would_move_back"]);
    assert_eq!(counts["left_total"], preview["total"]["changed_since"]);
    for (kind, expected) in preview["items"].as_object().unwrap() {
        assert_eq!(counts["moved_back"][kind], expected["would_move_back"], "{kind}");
        assert_eq!(counts["left"][kind], expected["changed_since"], "{kind}");
    }
    // Once undone, not again.
    let (status, refused) =
        app.post(&format!("/v1/offboardings/{run}/undo-transfer"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "already_undone");
    assert_eq!(
        app.count("SELECT count(*) FROM offboard.runs WHERE action = 'undo_transfer'").await,
        1
    );
}

#[sqlx::test]
async fn an_undo_is_refused_clearly_and_changes_nothing(pool: PgPool) {
    let other_company_token = "undo-other-company-token@999999";
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_API_TOKENS", other_company_token)],
        SeedOptions { users: 8, items_per_user: 10, seed: 3 },
    )
    .await;
    let (leaver, a, b, c) = (app.regular(0), app.regular(1), app.regular(2), app.regular(3));
    let run = deactivate(&app, leaver, a, b).await;
    let entries = journal(&app, run).await;
    assert!(!entries.is_empty());
    let path = format!("/v1/offboardings/{run}/undo-transfer");
    let runs_before = app.count("SELECT count(*) FROM offboard.runs").await;

    // The user is still deactivated and nobody else is named.
    let (status, body) = app.post(&path, &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "user_not_reactivated");

    // An inactive user named instead.
    sqlx::query("UPDATE crm.users SET status = 'deactivated', holds_seat = false WHERE id = $1")
        .bind(c)
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, body) = app.post(&path, &json!({"to_user_id": c})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "target_unavailable");
    assert_eq!(body["error"]["field"], "to_user_id");
    let (status, body) = app.post(&path, &json!({"to_user_id": 0})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "to_user_id");
    // An id near the top of bigint is no user either (it once overflowed the lock key: 500).
    let (status, body) = app.post(&path, &json!({"to_user_id": i64::MAX - 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "target_unavailable");

    // Another company's token sees no such run.
    let bearer = format!("Bearer {}", other_company_token.split('@').next().unwrap());
    let auth = [("authorization", bearer.as_str())];
    let (status, _, body) = app.call(Method::POST, &path, Some("{}"), &auth).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = app.call(Method::GET, &format!("{path}/preview"), None, &auth).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // A run that moved nothing: the reactivation.
    reactivate(&app, leaver).await;
    let reactivation: Uuid = sqlx::query_scalar(
        "SELECT id FROM offboard.runs WHERE action = 'reactivate' AND user_id = $1",
    )
    .bind(leaver)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (status, body) =
        app.post(&format!("/v1/offboardings/{reactivation}/undo-transfer"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "nothing_to_undo");
    // And the host cannot ask for an undo as a run of its own.
    let (status, body) = app
        .post(
            "/v1/offboardings",
            &json!({"company_id": app.company.company_id, "user_id": leaver,
                    "actor_user_id": app.admin(), "action": "undo_transfer"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "action");

    // Nothing was written, nothing moved.
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, runs_before + 1);
    assert_eq!(
        app.count("SELECT count(*) FROM offboard.runs WHERE action = 'undo_transfer'").await,
        0
    );
    for (kind, item, owner) in &entries {
        assert_eq!(owner_of(&app, kind, *item).await, Some(*owner), "{kind} {item}");
    }
}

#[sqlx::test]
async fn an_undo_to_another_user_needs_no_reactivation(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (leaver, a, b, c) = (app.regular(0), app.regular(1), app.regular(2), app.regular(3));
    let run = deactivate(&app, leaver, a, b).await;
    let entries = journal(&app, run).await;
    let (status, accepted) =
        app.post(&format!("/v1/offboardings/{run}/undo-transfer"), &json!({"to_user_id": c})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    app.drain().await;
    let undo: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();
    let undone = app.run(undo).await;
    assert_eq!(undone["status"], "succeeded", "{undone:#}");
    assert_eq!(undone["receipt"]["undo_transfer"]["to_user_id"], c);
    assert_eq!(undone["receipt"]["undo_transfer"]["moved_back_total"], entries.len());
    for (kind, item, _) in &entries {
        assert_eq!(owner_of(&app, kind, *item).await, Some(c), "{kind} {item}");
    }
    // The user stays deactivated.
    let status: String = sqlx::query_scalar("SELECT status FROM crm.users WHERE id = $1")
        .bind(leaver)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "deactivated");
}

#[sqlx::test]
async fn a_worker_killed_mid_undo_is_replaced_and_every_item_goes_back_once(pool: PgPool) {
    let app =
        TestApp::with(pool, &[], SeedOptions { users: 6, items_per_user: 2_000, seed: 11 }).await;
    let (leaver, a, b) = (app.regular(0), app.regular(1), app.regular(2));
    let run = deactivate(&app, leaver, a, b).await;
    let entries = journal(&app, run).await;
    reactivate(&app, leaver).await;

    let small_batches = [("OFFBOARD_REASSIGN_BATCH", "10")];
    let mut first = spawn_worker(&app, &small_batches);
    let (status, accepted) =
        app.post(&format!("/v1/offboardings/{run}/undo-transfer"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let undo: Uuid = accepted["id"].as_str().unwrap().parse().unwrap();

    // Kill the worker while the items are partly given back.
    let started = Instant::now();
    loop {
        let step = app.run(undo).await["steps"][0].clone();
        let done = step["done"].as_i64().unwrap();
        if step["status"] == "running" && done > 0 {
            first.start_kill().unwrap();
            first.wait().await.unwrap();
            assert!(done < entries.len() as i64, "the undo finished before the kill");
            break;
        }
        assert!(step["status"] != "succeeded", "the undo finished before the kill; make it longer");
        assert!(started.elapsed() < DEADLINE, "the undo never started");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }

    let mut second = spawn_worker(&app, &small_batches);
    let undone = app.wait_for_run(undo).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    app.cleanup().await;

    assert_eq!(undone["status"], "succeeded", "{undone:#}");
    let lost = undone["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "lease_expired")
        .count();
    assert_eq!(lost, 1, "{:#}", undone["history"]);
    // Every entry looked at once: all moved back, none counted as left (an entry looked
    // at twice would be, its item being with the user already).
    let counts = &undone["receipt"]["undo_transfer"];
    assert_eq!(counts["moved_back_total"], entries.len(), "{counts}");
    assert_eq!(counts["left_total"], 0, "{counts}");
    assert_eq!(undone["steps"][0]["done"], entries.len());
    for (kind, item, _) in &entries {
        assert_eq!(owner_of(&app, kind, *item).await, Some(leaver), "{kind} {item}");
    }
}
