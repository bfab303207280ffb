//! Creating and changing a provisioned user: under the company's seat count, refused on a
//! collision with another user of the company.

use sqlx::PgConnection;

use super::UserAttributes;

/// Why a user could not be created or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another user of the company has this userName (or, without one, this email).
    UserNameTaken,
    /// Another user of the company has this email.
    EmailTaken,
    /// Every seat of the company is held; carries the seat count.
    NoFreeSeat(i32),
    CompanyNotFound,
}

/// Whether `attributes` would collide with another user of the company than `except`
/// (a userName, or without one an email, equal case-insensitively; an email).
pub async fn collision(
    conn: &mut PgConnection,
    company_id: i64,
    attributes: &UserAttributes,
    except: Option<i64>,
) -> Result<Option<Refusal>, sqlx::Error> {
    let (name_taken, email_taken): (bool, bool) = sqlx::query_as(
        "SELECT
             EXISTS (SELECT 1 FROM crm.users
                     WHERE company_id = $1 AND id IS DISTINCT FROM $2 AND status <> 'deleted'
                       AND lower(coalesce(user_name, email)) = lower($3)),
             $4::text IS NOT NULL AND EXISTS (
                     SELECT 1 FROM crm.users
                     WHERE company_id = $1 AND id IS DISTINCT FROM $2 AND lower(email) = lower($4))",
    )
    .bind(company_id)
    .bind(except)
    .bind(&attributes.user_name)
    .bind(attributes.email.as_deref())
    .fetch_one(&mut *conn)
    .await?;
    Ok(if name_taken {
        Some(Refusal::UserNameTaken)
    } else if email_taken {
        Some(Refusal::EmailTaken)
    } else {
        None
    })
}

/// What a unique violation on write means.
fn refusal_of(err: &sqlx::Error) -> Option<Refusal> {
    let sqlx::Error::Database(db) = err else { return None };
    if db.code().as_deref() != Some("23505") {
        return None;
    }
    match db.constraint() {
        Some("users_user_name_unique_per_company") => Some(Refusal::UserNameTaken),
        Some("users_email_unique_per_company") => Some(Refusal::EmailTaken),
        _ => None,
    }
}

/// Creates a user of the company — a regular user without account-settings access. An
/// active one takes a free seat (the company's row is locked while the seats are counted);
/// one created inactive holds none.
pub async fn create(
    conn: &mut PgConnection,
    company_id: i64,
    attributes: &UserAttributes,
    active: bool,
) -> Result<Result<i64, Refusal>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let seats: Option<(i32, i64)> = sqlx::query_as(
        "SELECT c.seats, (SELECT count(*) FROM crm.users u WHERE u.company_id = c.id AND u.holds_seat)
         FROM crm.companies c WHERE c.id = $1 FOR UPDATE",
    )
    .bind(company_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((seats, held)) = seats else { return Ok(Err(Refusal::CompanyNotFound)) };
    if let Some(refusal) = collision(&mut tx, company_id, attributes, None).await? {
        return Ok(Err(refusal));
    }
    if active && held >= i64::from(seats) {
        return Ok(Err(Refusal::NoFreeSeat(seats)));
    }
    let inserted = sqlx::query_scalar(
        "INSERT INTO crm.users
             (company_id, name, email, role, account_settings_access, status, holds_seat,
              deactivated_at, user_name, external_id, given_name, family_name, email_type,
              email_primary, scim_extension_hidden)
         VALUES ($1, $2, $3, 'regular', false, CASE WHEN $4 THEN 'active' ELSE 'deactivated' END,
                 $4, CASE WHEN $4 THEN NULL ELSE now() END, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id",
    )
    .bind(company_id)
    .bind(attributes.display_name.as_deref())
    .bind(attributes.email.as_deref())
    .bind(active)
    .bind(&attributes.user_name)
    .bind(attributes.external_id.as_deref())
    .bind(attributes.given_name.as_deref())
    .bind(attributes.family_name.as_deref())
    .bind(attributes.email_type.as_deref())
    .bind(attributes.email_primary)
    .bind(attributes.extension_hidden)
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => id,
        Err(e) => return refusal_of(&e).map(Err).ok_or(e),
    };
    tx.commit().await?;
    Ok(Ok(id))
}

/// Replaces the attributes of a user of the company (status is left to the runs).
pub async fn update(
    conn: &mut PgConnection,
    company_id: i64,
    user_id: i64,
    attributes: &UserAttributes,
) -> Result<Result<(), Refusal>, sqlx::Error> {
    if let Some(refusal) = collision(&mut *conn, company_id, attributes, Some(user_id)).await? {
        return Ok(Err(refusal));
    }
    let updated = sqlx::query(
        "UPDATE crm.users
         SET name = $3, email = $4, user_name = $5, external_id = $6, given_name = $7,
             family_name = $8, email_type = $9, email_primary = $10,
             scim_extension_hidden = $11
         WHERE id = $2 AND company_id = $1 AND status <> 'deleted'",
    )
    .bind(company_id)
    .bind(user_id)
    .bind(attributes.display_name.as_deref())
    .bind(attributes.email.as_deref())
    .bind(&attributes.user_name)
    .bind(attributes.external_id.as_deref())
    .bind(attributes.given_name.as_deref())
    .bind(attributes.family_name.as_deref())
    .bind(attributes.email_type.as_deref())
    .bind(attributes.email_primary)
    .bind(attributes.extension_hidden)
    .execute(&mut *conn)
    .await;
    match updated {
        Ok(_) => Ok(Ok(())),
        Err(e) => refusal_of(&e).map(Err).ok_or(e),
    }
}
