//! A seeded company pointed at outside systems: OAuth providers that revoke its syncs'
//! grants, and app vendors whose uninstall callbacks its installs call.

use sqlx::PgPool;

use super::APPS;

/// The OAuth providers seeded companies' syncs use, with the path of their RFC 7009
/// revocation endpoint under a base URL.
pub const PROVIDERS: [(&str, &str); 2] =
    [("google", "/o/oauth2/revoke"), ("microsoft", "/oauth2/revoke")];

/// Points a seeded company at outside systems: the OAuth providers' revocation endpoints
/// under `provider_base_url` (and each of the company's syncs gets a provider and a
/// refresh token, a fresh random one), and the app catalogue's uninstall callbacks under
/// `vendor_base_url` (`{base}/apps/{key}/uninstall`, each app with a signing secret).
/// Without a base URL that part is left as it was: syncs without grants and apps without
/// callbacks make no calls. Providers and the catalogue are shared by every company.
/// Returns the app keys' signing secrets, so a test or script playing the vendor can
/// verify what it receives.
pub async fn connect_outside(
    pool: &PgPool,
    company_id: i64,
    provider_base_url: Option<&str>,
    vendor_base_url: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut tx = pool.begin().await?;
    if let Some(base) = provider_base_url {
        let base = base.trim_end_matches('/');
        for (name, path) in PROVIDERS {
            sqlx::query(
                "INSERT INTO crm.oauth_providers (name, revocation_url) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET revocation_url = EXCLUDED.revocation_url",
            )
            .bind(name)
            .bind(format!("{base}{path}"))
            .execute(&mut *tx)
            .await?;
        }
        // Email and calendar sync with Microsoft for every third user, Google otherwise.
        sqlx::query(
            "UPDATE crm.account_syncs s
             SET provider_id = (SELECT id FROM crm.oauth_providers
                                WHERE name = CASE WHEN s.user_id % 3 = 0
                                                   AND s.kind IN ('email', 'calendar')
                                                  THEN 'microsoft' ELSE 'google' END),
                 refresh_token = 'rt_' || replace(gen_random_uuid()::text, '-', ''),
                 revoked_at = NULL
             WHERE s.company_id = $1 AND s.enabled",
        )
        .bind(company_id)
        .execute(&mut *tx)
        .await?;
    }
    let mut secrets = Vec::new();
    if let Some(base) = vendor_base_url {
        let base = base.trim_end_matches('/');
        for key in APPS {
            let fresh = crate::domain::webhook::WebhookSecret::generate().expose();
            // An app keeps its secret once it has one.
            let secret: String = sqlx::query_scalar(
                "INSERT INTO crm.apps AS a (key, vendor_uninstall_url, vendor_signing_secret)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE
                 SET vendor_uninstall_url = EXCLUDED.vendor_uninstall_url,
                     vendor_signing_secret = coalesce(a.vendor_signing_secret,
                                                      EXCLUDED.vendor_signing_secret)
                 RETURNING vendor_signing_secret",
            )
            .bind(key)
            .bind(format!("{base}/apps/{key}/uninstall"))
            .bind(&fresh)
            .fetch_one(&mut *tx)
            .await?;
            secrets.push((key.to_string(), secret));
        }
    }
    tx.commit().await?;
    Ok(secrets)
}
