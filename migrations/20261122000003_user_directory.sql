-- How the CRM shows a user: a deleted user appears as "deleted user, ID <id>", with no
-- name, email or picture left to show.
CREATE VIEW crm.user_directory AS
    SELECT id,
           company_id,
           CASE WHEN status = 'deleted' THEN 'deleted user, ID ' || id ELSE name END AS display_name,
           email,
           picture_url,
           status
    FROM crm.users;
