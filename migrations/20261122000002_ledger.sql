-- The ledger: PostgreSQL is the record of every offboarding run and step; Redis only
-- carries work. Nothing here holds personal data: users appear by id only.

CREATE SCHEMA IF NOT EXISTS offboard;

CREATE TABLE offboard.runs (
    id              uuid PRIMARY KEY,
    company_id      bigint NOT NULL,
    user_id         bigint NOT NULL,
    action          text NOT NULL CHECK (action IN
                        ('deactivate', 'delete', 'deactivate_and_delete', 'redact', 'reactivate')),
    status          text NOT NULL DEFAULT 'queued' CHECK (status IN
                        ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    -- The validated transfer plan, user ids only.
    plan            jsonb NOT NULL DEFAULT '{}',
    -- Action parameters (replacement user id, redaction flags); never names or emails.
    params          jsonb NOT NULL DEFAULT '{}',
    actor_user_id   bigint NOT NULL,
    idempotency_key text,
    steps_total     integer NOT NULL,
    -- Counts down as steps succeed; the step that brings it to 0 finishes the run.
    steps_remaining integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    receipt         jsonb,
    error_code      text,
    error_message   text
);
-- One active run per user. A failed run stays active until an operator retries or cancels
-- it, so two runs never act on one user at once.
CREATE UNIQUE INDEX runs_one_active_per_user ON offboard.runs (company_id, user_id)
    WHERE status IN ('queued', 'running', 'failed');
CREATE INDEX runs_company_created ON offboard.runs (company_id, created_at DESC);
CREATE INDEX runs_status_created ON offboard.runs (status, created_at DESC);
CREATE INDEX runs_created ON offboard.runs (created_at DESC, id);

-- Status moves pending (waiting on dependencies) -> ready -> queued (handed to Redis)
-- -> running (leased by a worker) -> succeeded | skipped. A retryable failure returns to
-- ready with a later next_attempt_at; a permanent one, or the last attempt, ends in dead.
-- Every transition is one UPDATE ... WHERE status = ... so two racers cannot both win.
CREATE TABLE offboard.steps (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id             uuid NOT NULL REFERENCES offboard.runs (id) ON DELETE CASCADE,
    company_id         bigint NOT NULL,
    name               text NOT NULL,
    position           integer NOT NULL,
    depends_on         text[] NOT NULL DEFAULT '{}',
    -- Dependencies not yet succeeded; the step becomes ready when it reaches 0.
    deps_remaining     integer NOT NULL,
    status             text NOT NULL CHECK (status IN
                           ('pending', 'ready', 'queued', 'running', 'succeeded', 'skipped',
                            'dead', 'canceled')),
    attempts           integer NOT NULL DEFAULT 0,
    max_attempts       integer NOT NULL,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    queued_at          timestamptz,
    -- A lease is one claim: a fresh token per attempt fences out a worker that lost it,
    -- even when two workers share a name.
    lease_token        uuid,
    lease_owner        text,
    lease_expires_at   timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    done               bigint NOT NULL DEFAULT 0,
    total              bigint,
    -- Where a batched step resumes (keyset position), committed with each batch.
    cursor             jsonb,
    -- Counts of what the step changed, for the receipt.
    result             jsonb,
    last_error_code    text,
    last_error_message text,
    UNIQUE (run_id, name)
);
CREATE INDEX steps_ready ON offboard.steps (next_attempt_at, id) WHERE status = 'ready';
CREATE INDEX steps_in_flight ON offboard.steps (company_id) WHERE status IN ('queued', 'running');
CREATE INDEX steps_queued_since ON offboard.steps (queued_at) WHERE status = 'queued';
CREATE INDEX steps_lease_expiry ON offboard.steps (lease_expires_at) WHERE status = 'running';

-- What happened to a run, and who did it: enqueue, retries, cancels, dead steps.
CREATE TABLE offboard.run_events (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES offboard.runs (id) ON DELETE CASCADE,
    at     timestamptz NOT NULL DEFAULT now(),
    kind   text NOT NULL,
    step   text,
    -- 'user:<id>' for a host-app actor, 'operator' for the API token holder, 'system'.
    actor  text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX run_events_run ON offboard.run_events (run_id, id);

CREATE TABLE offboard.idempotency_keys (
    company_id   bigint NOT NULL,
    key          text NOT NULL,
    -- sha256 of the canonical request, so a reused key with another body is refused.
    request_hash text NOT NULL,
    run_id       uuid NOT NULL REFERENCES offboard.runs (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company_id, key)
);

-- Private-email purges due deactivated_at + retention. The row is the promise; the
-- delayed Redis task only makes it punctual, and the sweeper fires what Redis lost.
CREATE TABLE offboard.scheduled_purges (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id    bigint NOT NULL,
    user_id       bigint NOT NULL,
    run_id        uuid NOT NULL REFERENCES offboard.runs (id) ON DELETE CASCADE,
    due_at        timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'scheduled'
                  CHECK (status IN ('scheduled', 'done', 'canceled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    fired_at      timestamptz,
    -- 'queue' when the delayed Redis task fired it, 'sweeper' when the sweeper did.
    fired_by      text CHECK (fired_by IN ('queue', 'sweeper')),
    emails_deleted integer,
    canceled_at   timestamptz
);
CREATE UNIQUE INDEX scheduled_purges_one_per_user ON offboard.scheduled_purges (user_id)
    WHERE status = 'scheduled';
CREATE INDEX scheduled_purges_due ON offboard.scheduled_purges (due_at) WHERE status = 'scheduled';
