-- Identity providers (SCIM 2.0) and the company offboarding policy.
--
-- crm.users gets what an identity provider keeps about a user: its userName and
-- externalId, the name split in given and family name, the kind of the email and whether
-- it is the primary one. Like
-- name and email they are personal data, erased when the user is deleted. `kind` tells a
-- person from the company's service actor: the user recorded as the actor of runs an
-- identity provider starts (no seat, no role beyond account-settings access, never listed
-- to the identity provider).
ALTER TABLE crm.users
    ADD COLUMN kind        text NOT NULL DEFAULT 'person' CHECK (kind IN ('person', 'service')),
    ADD COLUMN user_name   text,
    ADD COLUMN external_id text,
    ADD COLUMN given_name  text,
    ADD COLUMN family_name text,
    ADD COLUMN email_type  text,
    ADD COLUMN email_primary boolean;

ALTER TABLE crm.users DROP CONSTRAINT deleted_users_keep_no_personal_data;
ALTER TABLE crm.users ADD CONSTRAINT deleted_users_keep_no_personal_data CHECK (
    status <> 'deleted'
    OR (name IS NULL AND email IS NULL AND phone IS NULL AND picture_url IS NULL
        AND user_name IS NULL AND external_id IS NULL AND given_name IS NULL
        AND family_name IS NULL)
);

-- userName is unique in a company, case-insensitively (RFC 7643: caseExact false). A user
-- without one is known to identity providers by their email, which the SCIM API checks
-- against under the company's lock.
CREATE UNIQUE INDEX users_user_name_unique_per_company ON crm.users (company_id, lower(user_name))
    WHERE user_name IS NOT NULL;
CREATE INDEX users_external_id ON crm.users (company_id, external_id) WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX users_one_service_actor_per_company ON crm.users (company_id)
    WHERE kind = 'service';

-- A company's offboarding policy: what runs an identity provider starts do. One row per
-- company; a company without one has the defaults below. New settings (approval, a
-- delay before deletion) are new columns with a default, so existing rows keep meaning
-- what they meant.
CREATE TABLE offboard.offboarding_policies (
    company_id    bigint PRIMARY KEY,
    -- The default transfer plan, in the shape of a request's `transfer`; user ids only.
    transfer      jsonb NOT NULL DEFAULT '{}',
    -- What a SCIM deactivation (active: false) does.
    on_deactivate text NOT NULL DEFAULT 'deactivate' CHECK (on_deactivate IN ('deactivate')),
    -- What a SCIM DELETE does: delete an already deactivated user, or deactivate and
    -- delete in one run.
    on_delete     text NOT NULL DEFAULT 'deactivate_and_delete'
                  CHECK (on_delete IN ('delete', 'deactivate_and_delete')),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- `token:company-<id>` or `token:operator`.
    updated_by    text NOT NULL
);

-- A user's runs, newest first: the SCIM user resource shows the user's current run, and
-- the run list filters by user.
CREATE INDEX runs_user_created ON offboard.runs (company_id, user_id, created_at DESC);
