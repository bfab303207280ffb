-- Host webhooks (Standard Webhooks 1.0): endpoints per company, events, and one delivery
-- row per (event, endpoint) — the outbox. Event and delivery rows are written by triggers
-- in the transaction that changes a run's, a step's or a purge's state, whatever statement
-- makes the change: no code path can change state and forget to tell the host. Payloads
-- hold ids and counts only, never names or emails.

CREATE TABLE offboard.webhook_endpoints (
    id                     uuid PRIMARY KEY,
    company_id             bigint NOT NULL,
    url                    text NOT NULL,
    description            text,
    -- Event types the endpoint receives; empty means all.
    event_types            text[] NOT NULL DEFAULT '{}',
    enabled                boolean NOT NULL DEFAULT true,
    -- Why it is disabled: 'gone' (the receiver answered 410) or 'api' (turned off by a call).
    disabled_reason        text CHECK (disabled_reason IN ('gone', 'api')),
    -- `whsec_` + base64 of the key. Kept as is: an HMAC needs the key itself.
    secret                 text NOT NULL,
    -- After a rotation the previous secret signs too, until previous_secret_until.
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- Set when a delivery used up its retry schedule; cleared by an update or a success.
    failing                boolean NOT NULL DEFAULT false,
    -- The breaker: failed attempts in a row, and the pause they earned.
    consecutive_failures   integer NOT NULL DEFAULT 0,
    paused_until           timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_company ON offboard.webhook_endpoints (company_id, created_at, id);

CREATE TABLE offboard.webhook_events (
    -- `webhook-id` is 'msg_' || this id without dashes: one per event, the same on every
    -- attempt and replay, so receivers dedupe by it.
    id          uuid PRIMARY KEY,
    company_id  bigint NOT NULL,
    type        text NOT NULL,
    -- The body sent: {"type", "timestamp", "data"}.
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- pending -> sending (leased by a deliverer) -> succeeded | pending (later) | failed.
CREATE TABLE offboard.webhook_deliveries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id          uuid NOT NULL REFERENCES offboard.webhook_events (id) ON DELETE CASCADE,
    endpoint_id       uuid NOT NULL REFERENCES offboard.webhook_endpoints (id) ON DELETE CASCADE,
    company_id        bigint NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sending', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    lease_expires_at  timestamptz,
    last_attempt_at   timestamptz,
    -- The receiver's status code (null when no answer came), a stable error code when
    -- the attempt failed ('timeout', 'connect', 'address_refused', 'http_500', ...), and
    -- how long the attempt took.
    last_status_code  integer,
    last_error        text,
    last_latency_ms   integer,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX webhook_deliveries_due ON offboard.webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_sending ON offboard.webhook_deliveries (endpoint_id)
    WHERE status = 'sending';
CREATE INDEX webhook_deliveries_endpoint ON offboard.webhook_deliveries (endpoint_id, id DESC);
CREATE INDEX webhook_deliveries_company ON offboard.webhook_deliveries (company_id, id DESC);
CREATE INDEX webhook_deliveries_event ON offboard.webhook_deliveries (event_id);

-- Writes an event and its deliveries when the company has an enabled endpoint that takes
-- the type (otherwise nothing: a company without endpoints pays one index probe), and
-- wakes the deliverers when the transaction commits.
CREATE FUNCTION offboard.emit_webhook_event(p_company bigint, p_type text, p_data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    event_id uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM offboard.webhook_endpoints
                   WHERE company_id = p_company AND enabled
                     AND (event_types = '{}' OR p_type = ANY (event_types))) THEN
        RETURN;
    END IF;
    event_id := gen_random_uuid();
    INSERT INTO offboard.webhook_events (id, company_id, type, payload)
    VALUES (event_id, p_company, p_type,
            jsonb_build_object(
                'type', p_type,
                'timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'data', p_data));
    INSERT INTO offboard.webhook_deliveries (event_id, endpoint_id, company_id)
    SELECT event_id, e.id, p_company
    FROM offboard.webhook_endpoints e
    WHERE e.company_id = p_company AND e.enabled
      AND (e.event_types = '{}' OR p_type = ANY (e.event_types))
    ORDER BY e.id;
    PERFORM pg_notify('offboard_webhooks', '');
END $$;

-- A run that ends: offboarding.succeeded | failed | canceled; and when it succeeded or was
-- canceled (final states), items.transferred once per recipient, with the counts per item
-- type the run's reassignments gave it. (A failed run may be retried, so its transfers are
-- told when it finally ends.)
CREATE FUNCTION offboard.run_webhook_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    recipient record;
BEGIN
    PERFORM offboard.emit_webhook_event(
        NEW.company_id,
        'offboarding.' || NEW.status,
        jsonb_strip_nulls(jsonb_build_object(
            'run_id', NEW.id,
            'company_id', NEW.company_id,
            'user_id', NEW.user_id,
            'action', NEW.action,
            'status', NEW.status,
            'error_code', CASE WHEN NEW.status = 'failed' THEN NEW.error_code END)));
    IF NEW.status IN ('succeeded', 'canceled') THEN
        FOR recipient IN
            SELECT t.key::bigint AS user_id, jsonb_object_agg(s.result->>'item_type', t.value::bigint) AS items
            FROM offboard.steps s, jsonb_each(s.result->'to') t
            WHERE s.run_id = NEW.id AND s.name LIKE 'reassign\_%' AND s.status = 'succeeded'
              AND jsonb_typeof(s.result->'to') = 'object' AND t.value::bigint > 0
            GROUP BY t.key
            ORDER BY t.key::bigint
        LOOP
            PERFORM offboard.emit_webhook_event(
                NEW.company_id,
                'items.transferred',
                jsonb_build_object(
                    'run_id', NEW.id,
                    'company_id', NEW.company_id,
                    'from_user_id', NEW.user_id,
                    'recipient_user_id', recipient.user_id,
                    'items', recipient.items));
        END LOOP;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER runs_webhook_events
    AFTER UPDATE OF status ON offboard.runs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('succeeded', 'failed', 'canceled'))
    EXECUTE FUNCTION offboard.run_webhook_events();

CREATE FUNCTION offboard.step_webhook_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM offboard.emit_webhook_event(
        NEW.company_id,
        'offboarding.step_dead',
        jsonb_strip_nulls(jsonb_build_object(
            'run_id', NEW.run_id,
            'company_id', NEW.company_id,
            'step', NEW.name,
            'attempts', NEW.attempts,
            'error_code', NEW.last_error_code)));
    RETURN NULL;
END $$;

CREATE TRIGGER steps_webhook_events
    AFTER UPDATE OF status ON offboard.steps
    FOR EACH ROW
    WHEN (NEW.status = 'dead' AND OLD.status IS DISTINCT FROM 'dead')
    EXECUTE FUNCTION offboard.step_webhook_events();

CREATE FUNCTION offboard.purge_webhook_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM offboard.emit_webhook_event(
        NEW.company_id,
        'private_emails.purged',
        jsonb_build_object(
            'purge_id', NEW.id,
            'run_id', NEW.run_id,
            'company_id', NEW.company_id,
            'user_id', NEW.user_id,
            'emails_deleted', coalesce(NEW.emails_deleted, 0)));
    RETURN NULL;
END $$;

CREATE TRIGGER scheduled_purges_webhook_events
    AFTER UPDATE OF status ON offboard.scheduled_purges
    FOR EACH ROW
    WHEN (NEW.status = 'done' AND OLD.status IS DISTINCT FROM 'done')
    EXECUTE FUNCTION offboard.purge_webhook_events();
