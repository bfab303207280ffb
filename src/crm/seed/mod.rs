//! `offboard seed`: a realistic company in the reference CRM store — admins and users, items
//! of every type (open and closed), syncs, app installs (some shared), webhooks,
//! dashboards, reports, automations and assignment rules naming users, LeadBooster chats,
//! playbooks and forms, private and shared emails, templates, notes, files, filters.
//!
//! Deterministic for a seed: names, statuses and timestamps derive from the seed and
//! positions only (ids come from the database's sequences). Set-based inserts, so a
//! million items take seconds. No text outside `crm.users` mentions a user's name, email
//! or phone, so erasing those four columns erases the person.

use chrono::{DateTime, TimeZone, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::Serialize;
use sqlx::PgPool;

mod outside;

pub use self::outside::{PROVIDERS, connect_outside};

#[derive(Debug, Clone, Copy)]
pub struct SeedOptions {
    pub users: usize,
    pub items_per_user: usize,
    pub seed: u64,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self { users: 12, items_per_user: 40, seed: 1 }
    }
}

#[derive(Clone, Serialize)]
pub struct SeededUser {
    pub id: i64,
    pub email: String,
    pub is_admin: bool,
}

crate::domain::debug_without_personal_data!(SeededUser { id, is_admin });

#[derive(Debug, Clone, Serialize)]
pub struct Seeded {
    pub company_id: i64,
    pub admin_ids: Vec<i64>,
    pub users: Vec<SeededUser>,
}

const FIRST: [&str; 32] = [
    "Astrid", "Bjorn", "Clara", "Dmitri", "Elin", "Farah", "Gustav", "Hanna", "Ivan", "Jonas",
    "Karin", "Lars", "Maja", "Nils", "Olga", "Per", "Quinn", "Rosa", "Sven", "Tove", "Ulla",
    "Viktor", "Wilma", "Xavier", "Yara", "Zeke", "Amir", "Beatrice", "Cyrus", "Delia", "Emil",
    "Freja",
];
const LAST: [&str; 32] = [
    "Lindqvist",
    "Okafor",
    "Nakamura",
    "Berglund",
    "Haddad",
    "Moreau",
    "Petrov",
    "Sandberg",
    "Castillo",
    "Eriksson",
    "Fischer",
    "Gallagher",
    "Holm",
    "Iyer",
    "Jansson",
    "Kowalski",
    "Lund",
    "Magnusson",
    "Novak",
    "Olsen",
    "Pereira",
    "Quist",
    "Rahman",
    "Stromberg",
    "Tanaka",
    "Umeh",
    "Varga",
    "Wallin",
    "Xu",
    "Ylva",
    "Zhang",
    "Abbott",
];
const APPS: [&str; 8] = [
    "mailchimp",
    "slack",
    "docusign",
    "zoom",
    "quickbooks",
    "calendly",
    "hubspot-import",
    "aircall",
];

/// (item table, share of a user's items in percent). The rest goes to deals.
const ITEM_SHARES: [(&str, usize); 7] = [
    ("deals", 25),
    ("leads", 15),
    ("persons", 20),
    ("products", 5),
    ("activities", 20),
    ("projects", 5),
    ("project_tasks", 10),
];

pub async fn seed(pool: &PgPool, options: SeedOptions) -> anyhow::Result<Seeded> {
    anyhow::ensure!(options.users >= 2, "--users must be at least 2 (someone has to stay admin)");
    anyhow::ensure!(options.users <= 100_000, "--users must be at most 100000");
    anyhow::ensure!(
        options.items_per_user <= 1_000_000,
        "--items-per-user must be at most 1000000"
    );
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut tx = pool.begin().await?;

    let ordinal: i64 =
        sqlx::query_scalar("SELECT count(*) + 1 FROM crm.companies").fetch_one(&mut *tx).await?;
    let n = options.users;
    let admins = (n / 10).clamp(2, n);
    let seats = (n + (n / 10).max(2)) as i32;
    let company_id: i64 = sqlx::query_scalar(
        "INSERT INTO crm.companies (name, seats, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(format!("Company {}-{ordinal}", options.seed))
    .bind(seats)
    .bind(epoch())
    .fetch_one(&mut *tx)
    .await?;

    // Unique names within the company: a shuffled walk over first x last, with a numeric
    // suffix only once every pair is used.
    let mut pairs: Vec<(usize, usize)> =
        (0..FIRST.len()).flat_map(|f| (0..LAST.len()).map(move |l| (f, l))).collect();
    pairs.shuffle(&mut rng);
    let mut names = Vec::with_capacity(n);
    let mut emails = Vec::with_capacity(n);
    let mut phones = Vec::with_capacity(n);
    let mut pictures = Vec::with_capacity(n);
    let mut roles = Vec::with_capacity(n);
    let mut settings_access = Vec::with_capacity(n);
    for k in 0..n {
        let (f, l) = pairs[k % pairs.len()];
        let round = k / pairs.len();
        let suffix = if round == 0 { String::new() } else { format!(" {}", round + 1) };
        names.push(format!("{} {}{suffix}", FIRST[f], LAST[l]));
        emails.push(format!(
            "{}.{}{}@c{company_id}.example.com",
            FIRST[f].to_lowercase(),
            LAST[l].to_lowercase(),
            if round == 0 { String::new() } else { (round + 1).to_string() }
        ));
        phones.push(format!("+1-555-{:03}-{:04}", company_id % 1000, k));
        pictures.push(format!(
            "https://avatars.example.com/c{company_id}/u{k}-{:08x}.png",
            rng.random::<u32>()
        ));
        let is_admin = k < admins;
        roles.push(if is_admin { "admin" } else { "regular" });
        settings_access.push(is_admin || k % 5 == 4);
    }
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO crm.users (company_id, name, email, phone, picture_url, role,
                                account_settings_access, created_at)
         SELECT $1, name, email, phone, picture, role, access, $8 + make_interval(mins => k::int)
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bool[])
              WITH ORDINALITY AS u(name, email, phone, picture, role, access, k)
         ORDER BY k
         RETURNING id",
    )
    .bind(company_id)
    .bind(&names)
    .bind(&emails)
    .bind(&phones)
    .bind(&pictures)
    .bind(&roles)
    .bind(&settings_access)
    .bind(epoch())
    .fetch_all(&mut *tx)
    .await?;

    insert_items(&mut tx, company_id, &ids, options).await?;
    insert_everything_else(&mut tx, company_id, &ids, admins, options.seed).await?;
    tx.commit().await?;

    let users = ids
        .iter()
        .zip(&emails)
        .enumerate()
        .map(|(k, (id, email))| SeededUser { id: *id, email: email.clone(), is_admin: k < admins })
        .collect();
    Ok(Seeded { company_id, admin_ids: ids[..admins].to_vec(), users })
}

fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 6, 9, 0, 0).single().expect("valid date")
}

async fn insert_items(
    tx: &mut sqlx::PgConnection,
    company_id: i64,
    user_ids: &[i64],
    options: SeedOptions,
) -> anyhow::Result<()> {
    let per_user = options.items_per_user;
    let mut counts: Vec<(&str, i64)> =
        ITEM_SHARES.iter().map(|(t, share)| (*t, (per_user * share / 100) as i64)).collect();
    let assigned: i64 = counts.iter().map(|(_, c)| c).sum();
    counts[0].1 += per_user as i64 - assigned;
    let seed = (options.seed % 1_000_003) as i64;

    for (table, count) in counts {
        if count == 0 {
            continue;
        }
        // Open/closed and timestamps depend on (seed, user position, item position) only.
        let (columns, values) = match table {
            "deals" => (
                "title, value, status",
                "'Deal #' || g, ((g * 37 + k * 11) % 500) * 100,
                 CASE WHEN (g * 7 + k * 3 + $4) % 10 < 6 THEN 'open'
                      WHEN (g + k + $4) % 2 = 0 THEN 'won' ELSE 'lost' END",
            ),
            "leads" => (
                "title, status",
                "'Lead #' || g,
                 CASE WHEN (g * 7 + k * 3 + $4) % 10 < 6 THEN 'open'
                      WHEN (g + k + $4) % 2 = 0 THEN 'converted' ELSE 'archived' END",
            ),
            "persons" => ("name", "'Contact #' || g"),
            "products" => ("name", "'Product #' || g"),
            "activities" => (
                "subject, done, due_at",
                "'Call #' || g, (g * 7 + k * 3 + $4) % 10 >= 6, $5 + make_interval(days => (g % 90)::int)",
            ),
            "projects" => (
                "title, status",
                "'Project #' || g,
                 CASE WHEN (g * 7 + k * 3 + $4) % 10 < 6 THEN 'open' ELSE 'completed' END",
            ),
            _ => (
                "title, status",
                "'Task #' || g, CASE WHEN (g * 7 + k * 3 + $4) % 10 < 6 THEN 'pending' ELSE 'done' END",
            ),
        };
        let sql = format!(
            "INSERT INTO crm.{table} (company_id, owner_id, created_at, {columns})
             SELECT $1, u.id, $5 + make_interval(secs => (g * 613 + k * 7)::double precision), {values}
             FROM unnest($2::bigint[]) WITH ORDINALITY AS u(id, k), generate_series(1, $3) AS g"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(company_id)
            .bind(user_ids)
            .bind(count)
            .bind(seed)
            .bind(epoch())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

async fn insert_everything_else(
    tx: &mut sqlx::PgConnection,
    company_id: i64,
    user_ids: &[i64],
    admins: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let admin_ids = &user_ids[..admins];
    let apps: Vec<&str> = APPS.to_vec();
    let statements: [&str; 22] = [
        // Two sessions and an API token each.
        "INSERT INTO crm.sessions (company_id, user_id)
         SELECT $1, u.id FROM unnest($2::bigint[]) u(id), generate_series(1, 2)",
        "INSERT INTO crm.api_tokens (company_id, user_id, token_sha256)
         SELECT $1, u.id, md5('token-' || $1 || '-' || k) FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        // The four syncs, all on.
        "INSERT INTO crm.account_syncs (company_id, user_id, kind)
         SELECT $1, u.id, kind FROM unnest($2::bigint[]) u(id),
                unnest(ARRAY['email', 'contacts', 'calendar', 'google_drive']) kind",
        "INSERT INTO crm.scheduler_links (company_id, user_id, slug)
         SELECT $1, u.id, 'meet-c' || $1 || '-' || k || '-' || md5($4::text || k)
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        // Everyone installs one app of their own; admins install two shared ones each.
        "INSERT INTO crm.app_installs (company_id, app_key, installed_by, shared)
         SELECT $1, ($5::text[])[1 + (k % 8)], u.id, false FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        "INSERT INTO crm.app_installs (company_id, app_key, installed_by, shared)
         SELECT $1, ($5::text[])[1 + ((k + s) % 8)], a.id, true
         FROM unnest($3::bigint[]) WITH ORDINALITY a(id, k), generate_series(1, 2) s",
        "INSERT INTO crm.webhooks (company_id, created_by, event, url)
         SELECT $1, u.id, CASE WHEN s = 1 THEN 'deal.updated' ELSE 'person.added' END,
                'https://hooks.example.net/c' || $1 || '/' || k || '/' || s
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k), generate_series(1, 1 + (k % 2)::int) s",
        // A shared dashboard with a public link, and a private one, per user.
        "INSERT INTO crm.dashboards (company_id, owner_id, title, shared, public_link_enabled)
         SELECT $1, u.id, CASE WHEN s = 1 THEN 'Pipeline overview' ELSE 'My forecast' END, s = 1, s = 1 OR k % 3 = 0
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k), generate_series(1, 2) s",
        "INSERT INTO crm.reports (company_id, owner_id, title, shared)
         SELECT $1, u.id, CASE WHEN s = 1 THEN 'Won deals by month' ELSE 'Activity log' END, s = 1
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k), generate_series(1, 2) s",
        // Each user created an automation whose trigger names the next user.
        "INSERT INTO crm.automations (company_id, creator_id, name, trigger_user_ids)
         SELECT $1, u.id, 'Follow up stale deals ' || k,
                ARRAY[($2::bigint[])[1 + (k % cardinality($2::bigint[]))]]
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        // Round-robin assignment rules naming three users each.
        "INSERT INTO crm.assignment_rules (company_id, name, assignee_ids)
         SELECT $1, 'Inbound leads ' || r,
                ARRAY[($2::bigint[])[1 + ((r * 3) % n)], ($2::bigint[])[1 + ((r * 3 + 1) % n)],
                      ($2::bigint[])[1 + ((r * 3 + 2) % n)]]
         FROM (SELECT cardinality($2::bigint[]) AS n) c, generate_series(0, greatest(cardinality($2::bigint[]) / 3, 1) - 1) r",
        "INSERT INTO crm.live_chats (company_id, operator_id, status)
         SELECT $1, u.id, CASE WHEN s < 3 THEN 'open' ELSE 'closed' END
         FROM unnest($2::bigint[]) u(id), generate_series(1, 3) s",
        "INSERT INTO crm.chatbot_playbooks (company_id, responsible_user_id, name)
         SELECT $1, u.id, 'Website greeter ' || k FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        "INSERT INTO crm.web_forms (company_id, responsible_user_id, name)
         SELECT $1, u.id, 'Contact form ' || k FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        // Emails: three private ones linked to deals, one private unlinked, two shared.
        // Each user's first deal, found in one pass: a correlated subquery here is planned
        // as a walk of the deals primary key (the rows are new, without statistics), which
        // made 2,000 users take minutes.
        "INSERT INTO crm.emails (company_id, owner_id, visibility, linked_type, linked_id, subject, body)
         SELECT $1, u.id, 'private', 'deal', first.id,
                'Re: proposal ' || s, 'Thanks, see the attached figures (' || s || ').'
         FROM unnest($2::bigint[]) u(id)
              LEFT JOIN (SELECT DISTINCT ON (owner_id) owner_id, id FROM crm.deals
                         WHERE company_id = $1 ORDER BY owner_id, id) first ON first.owner_id = u.id,
              generate_series(1, 3) s",
        "INSERT INTO crm.emails (company_id, owner_id, visibility, subject, body)
         SELECT $1, u.id, 'private', 'Lunch on Friday?', 'Shall we?' FROM unnest($2::bigint[]) u(id)",
        "INSERT INTO crm.emails (company_id, owner_id, visibility, linked_type, linked_id, subject, body)
         SELECT $1, u.id, 'shared', 'person', NULL, 'Quarterly check-in ' || s, 'Agenda attached.'
         FROM unnest($2::bigint[]) u(id), generate_series(1, 2) s",
        "INSERT INTO crm.email_templates (company_id, owner_id, name, body, shared)
         SELECT $1, u.id, 'Intro template ' || k || '.' || s, 'Hello {{person.first_name}}, ...', s = 1
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k), generate_series(1, 2) s",
        "INSERT INTO crm.notes (company_id, owner_id, linked_type, body)
         SELECT $1, u.id, 'deal', 'Customer asked for a discount (' || s || ').'
         FROM unnest($2::bigint[]) u(id), generate_series(1, 2) s",
        "INSERT INTO crm.files (company_id, owner_id, name, url)
         SELECT $1, u.id, 'contract-' || k || '.pdf', 'https://files.example.net/c' || $1 || '/' || md5($4::text || k) || '.pdf'
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
        "INSERT INTO crm.filters (company_id, owner_id, name, conditions)
         SELECT $1, u.id, 'My open deals', jsonb_build_object('owner_id', u.id, 'status', 'open')
         FROM unnest($2::bigint[]) u(id)",
        "INSERT INTO crm.campaigns (company_id, owner_id, name, status, scheduled_at)
         SELECT $1, u.id, 'Newsletter ' || k, 'scheduled', now() + interval '7 days'
         FROM unnest($2::bigint[]) WITH ORDINALITY u(id, k)",
    ];
    for sql in statements {
        sqlx::query(sql)
            .bind(company_id)
            .bind(user_ids)
            .bind(admin_ids)
            .bind(seed.to_string())
            .bind(&apps)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}
