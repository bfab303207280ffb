-- Steps that reach outside systems: OAuth grants revoked at their provider (RFC 7009) and
-- app vendors told of an uninstall (a Standard Webhooks-signed callback). The reference
-- CRM store gains what those calls need; the ledger gains one row per outbound call and
-- one per destination host (its breaker).

-- OAuth providers. The client id and secret are configuration (OFFBOARD_OAUTH_CLIENTS),
-- never stored here.
CREATE TABLE crm.oauth_providers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    -- The RFC 7009 revocation endpoint.
    revocation_url  text NOT NULL
);

-- Each account sync holds the grant it syncs with: its provider and refresh token. The
-- token is a secret: never logged, never in a receipt, a webhook or an error, and
-- overwritten (NULL) once revoked.
ALTER TABLE crm.account_syncs
    ADD COLUMN provider_id   bigint REFERENCES crm.oauth_providers (id),
    ADD COLUMN refresh_token text,
    ADD COLUMN revoked_at    timestamptz;

-- The marketplace catalogue: an app's vendor uninstall callback and the secret that signs
-- it (`whsec_…`, Standard Webhooks). An app without a callback is uninstalled locally only.
CREATE TABLE crm.apps (
    key                     text PRIMARY KEY,
    vendor_uninstall_url    text,
    vendor_signing_secret   text
);

-- One row per outbound call of a step: the intent is committed before the call, the call
-- is made outside any transaction, the outcome is committed after. A retry of the step
-- sends again only the calls not `succeeded`.
--   pending -> sending -> succeeded | failed (retryable; sent again by the step's next
--   attempt) | dead (a permanent answer; sent again only after an operator's retry)
CREATE TABLE offboard.outbound_calls (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            uuid NOT NULL,
    step_id           bigint NOT NULL,
    company_id        bigint NOT NULL,
    -- 'revoke_grant' (target: crm.account_syncs.id) or 'uninstall_callback'
    -- (target: crm.app_installs.id).
    kind              text NOT NULL CHECK (kind IN ('revoke_grant', 'uninstall_callback')),
    target_id         bigint NOT NULL,
    -- The destination host only: URLs can carry secrets.
    host              text NOT NULL,
    -- The same on every attempt: `Idempotency-Key` of a revocation, `webhook-id` of a
    -- callback, so the receiver can dedupe.
    idempotency_key   uuid NOT NULL UNIQUE,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sending', 'succeeded', 'failed', 'dead')),
    attempts          integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    -- A stable code: 'timeout', 'connect', 'http_500', ...
    last_error        text,
    last_latency_ms   integer,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    succeeded_at      timestamptz,
    UNIQUE (step_id, kind, target_id)
);
CREATE INDEX outbound_calls_run ON offboard.outbound_calls (run_id, step_id, id);

-- A breaker per destination host, shared by every process: failed calls in a row, the
-- pause they earned, and the one probe let through once the pause is over (half-open).
CREATE TABLE offboard.outbound_hosts (
    host                  text PRIMARY KEY,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    open_until            timestamptz,
    probe_until           timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- The host hears of every uninstall: `app.uninstalled`, ids only.
CREATE FUNCTION offboard.app_install_webhook_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM offboard.emit_webhook_event(
        NEW.company_id,
        'app.uninstalled',
        jsonb_build_object(
            'install_id', NEW.id,
            'company_id', NEW.company_id,
            'app_key', NEW.app_key,
            'installed_by_user_id', NEW.installed_by,
            'shared', NEW.shared));
    RETURN NULL;
END $$;

CREATE TRIGGER app_installs_webhook_events
    AFTER UPDATE OF status ON crm.app_installs
    FOR EACH ROW
    WHEN (NEW.status = 'uninstalled' AND OLD.status IS DISTINCT FROM 'uninstalled')
    EXECUTE FUNCTION offboard.app_install_webhook_events();
