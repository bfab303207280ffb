-- Hardening (issue 11).
--
-- Who receives items from an active run: the user ids a stored plan names as targets
-- (a replacement is stored under its id), indexed for the active runs only, so that a
-- request to deactivate or delete a user finds at once whether an active run is moving
-- items to them (409 user_is_transfer_target). The status list is the one of
-- runs_one_active_per_user.
CREATE INDEX runs_active_targets ON offboard.runs
    USING gin (jsonb_path_query_array(plan, '$.*.targets[*].user_id') jsonb_path_ops)
    WHERE status IN ('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed');

-- Login blocked by an offboarding: the store refuses new sessions and API tokens for the
-- user (block_login sets it; a reactivation, or a deactivation canceled before the user
-- was deactivated, lifts it). A deactivated or deleted user gets none either.
ALTER TABLE crm.users ADD COLUMN login_blocked boolean NOT NULL DEFAULT false;

CREATE FUNCTION crm.refuse_blocked_login() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refused boolean;
BEGIN
    -- FOR SHARE waits for a block_login that is committing, then reads its flag.
    SELECT login_blocked OR status <> 'active' INTO refused
    FROM crm.users WHERE id = NEW.user_id FOR SHARE;
    IF refused THEN
        RAISE EXCEPTION 'login is blocked for user %', NEW.user_id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'login_blocked';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sessions_refuse_blocked_login BEFORE INSERT ON crm.sessions
    FOR EACH ROW EXECUTE FUNCTION crm.refuse_blocked_login();
CREATE TRIGGER api_tokens_refuse_blocked_login BEFORE INSERT ON crm.api_tokens
    FOR EACH ROW EXECUTE FUNCTION crm.refuse_blocked_login();
