//! What a user owns, before anything changes; and, for a transfer plan, exactly how many
//! items of each type each target will get (a dry run). The dry run uses the same
//! arithmetic as the reassignment steps, over the same oldest-first order, so what it
//! promises is what the run does.

use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::items::count_in_scope;
use crate::domain::{ItemType, Scope, TransferPlan};

/// Everything the user owns or is named in, by count (ids for the review lists).
pub async fn belongings(
    tx: &mut PgConnection,
    company_id: i64,
    user_id: i64,
    is_admin: bool,
) -> Result<Value, sqlx::Error> {
    let mut items = Map::new();
    for item in ItemType::ALL {
        let open = count_in_scope(&mut *tx, company_id, user_id, item, Scope::Open).await?;
        let all = count_in_scope(&mut *tx, company_id, user_id, item, Scope::All).await?;
        items.insert(item.key().into(), json!({"open": open, "all": all}));
    }
    let row: Value = sqlx::query_scalar(
        "SELECT jsonb_build_object(
           'sessions', (SELECT count(*) FROM crm.sessions WHERE company_id = $1 AND user_id = $2),
           'api_tokens', (SELECT count(*) FROM crm.api_tokens WHERE company_id = $1 AND user_id = $2),
           'syncs', jsonb_build_object(
               'enabled', (SELECT coalesce(jsonb_agg(kind ORDER BY kind), '[]') FROM crm.account_syncs
                           WHERE company_id = $1 AND user_id = $2 AND enabled),
               'count', (SELECT count(*) FROM crm.account_syncs WHERE company_id = $1 AND user_id = $2 AND enabled)),
           'scheduler_link_active', EXISTS (SELECT 1 FROM crm.scheduler_links WHERE company_id = $1 AND user_id = $2
                                              AND (expires_at IS NULL OR expires_at > now())),
           'apps', jsonb_build_object(
               'installed_by_user', (SELECT count(*) FROM crm.app_installs
                                     WHERE company_id = $1 AND installed_by = $2 AND status = 'installed'),
               'shared_company_wide', CASE WHEN $3 THEN (SELECT count(*) FROM crm.app_installs
                                            WHERE company_id = $1 AND shared AND status = 'installed') END),
           'webhooks', (SELECT count(*) FROM crm.webhooks WHERE company_id = $1 AND created_by = $2 AND active),
           'dashboards', jsonb_build_object(
               'shared', (SELECT count(*) FROM crm.dashboards WHERE company_id = $1 AND owner_id = $2 AND shared),
               'private', (SELECT count(*) FROM crm.dashboards WHERE company_id = $1 AND owner_id = $2 AND NOT shared),
               'public_links', (SELECT count(*) FROM crm.dashboards
                                WHERE company_id = $1 AND owner_id = $2 AND public_link_enabled)),
           'reports', jsonb_build_object(
               'shared', (SELECT count(*) FROM crm.reports
                          WHERE company_id = $1 AND owner_id = $2 AND shared AND closed_at IS NULL),
               'private', (SELECT count(*) FROM crm.reports WHERE company_id = $1 AND owner_id = $2 AND NOT shared)),
           'automations', jsonb_build_object(
               'created_active', (SELECT count(*) FROM crm.automations WHERE company_id = $1 AND creator_id = $2 AND active),
               'naming_user', (SELECT coalesce(jsonb_agg(id ORDER BY id), '[]') FROM crm.automations
                               WHERE company_id = $1 AND creator_id <> $2 AND trigger_user_ids @> ARRAY[$2::bigint])),
           'assignment_rules_naming_user', (SELECT coalesce(jsonb_agg(id ORDER BY id), '[]') FROM crm.assignment_rules
                                            WHERE company_id = $1 AND assignee_ids @> ARRAY[$2::bigint]),
           'live_chats_open', (SELECT count(*) FROM crm.live_chats WHERE company_id = $1 AND operator_id = $2 AND status = 'open'),
           'chatbot_playbooks', (SELECT count(*) FROM crm.chatbot_playbooks WHERE company_id = $1 AND responsible_user_id = $2),
           'web_forms', (SELECT count(*) FROM crm.web_forms WHERE company_id = $1 AND responsible_user_id = $2),
           'private_emails', (SELECT count(*) FROM crm.emails WHERE company_id = $1 AND owner_id = $2
                              AND visibility = 'private' AND linked_type IS NOT NULL),
           'stays_untouched', jsonb_build_object(
               'notes', (SELECT count(*) FROM crm.notes WHERE company_id = $1 AND owner_id = $2),
               'files', (SELECT count(*) FROM crm.files WHERE company_id = $1 AND owner_id = $2),
               'filters', (SELECT count(*) FROM crm.filters WHERE company_id = $1 AND owner_id = $2),
               'email_templates_shared', (SELECT count(*) FROM crm.email_templates
                                          WHERE company_id = $1 AND owner_id = $2 AND shared),
               'campaigns_scheduled', (SELECT count(*) FROM crm.campaigns
                                       WHERE company_id = $1 AND owner_id = $2 AND status = 'scheduled')))",
    )
    .bind(company_id)
    .bind(user_id)
    .bind(is_admin)
    .fetch_one(&mut *tx)
    .await?;
    let mut out = row.as_object().cloned().unwrap_or_default();
    out.insert("items".into(), Value::Object(items));
    Ok(Value::Object(out))
}

/// Exact counts per target per item type for a plan; nothing is changed.
pub async fn dry_run(
    tx: &mut PgConnection,
    company_id: i64,
    user_id: i64,
    plan: &TransferPlan,
) -> Result<Value, sqlx::Error> {
    let mut items = Map::new();
    for item in ItemType::ALL {
        let all = count_in_scope(&mut *tx, company_id, user_id, item, Scope::All).await?;
        let entry = match plan.rule_for(item) {
            None => {
                json!({"mode": null, "in_scope": 0, "targets": [], "stays": all, "not_in_scope": all})
            }
            Some(rule) => {
                let in_scope =
                    count_in_scope(&mut *tx, company_id, user_id, item, rule.scope).await?;
                let split = rule.distribution.split(in_scope as u64);
                let targets: Vec<Value> = split
                    .targets
                    .iter()
                    .map(|(user, count)| json!({"user_id": user.get(), "count": count}))
                    .collect();
                json!({
                    "mode": rule.distribution.mode(),
                    "scope": rule.scope.as_str(),
                    "in_scope": in_scope,
                    "targets": targets,
                    "stays": split.stays,
                    "not_in_scope": all - in_scope,
                })
            }
        };
        items.insert(item.key().into(), entry);
    }
    Ok(json!({"items": items}))
}
