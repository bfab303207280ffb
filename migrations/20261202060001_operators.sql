-- Operators at scale: bulk actions by filter, worked through in chunks with their own
-- progress, and a bounded ledger of per-second samples for the dashboard's charts.

-- A bulk retry or cancel. The row is the operation's progress: each chunk of runs is
-- acted on in one transaction that also moves `cursor` (the last run id acted on, in id
-- order) and the counts, so a process killed mid-chunk leaves the chunk undone and the
-- next one to take the lease goes on from the cursor: no run twice, none skipped. The API
-- only records it; the sweeper of any worker process takes it (a lease, as for steps).
CREATE TABLE offboard.bulk_operations (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('retry', 'cancel')),
    -- Who asked: 'token:operator' or 'token:company-<id>'.
    operator         text NOT NULL,
    -- The filter as given (ids and enums only), and the company a scoped token is held to.
    filter           jsonb NOT NULL,
    company_scope    bigint,
    status           text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'succeeded')),
    -- Runs created after the operation are never part of it.
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Runs the filter matched when the operation was recorded (what its dry run says).
    matched          bigint NOT NULL,
    cursor           uuid,
    -- Runs acted on so far, and chunks committed.
    touched          bigint NOT NULL DEFAULT 0,
    chunks           integer NOT NULL DEFAULT 0,
    lease_token      uuid,
    lease_owner      text,
    lease_expires_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX bulk_operations_running ON offboard.bulk_operations (created_at) WHERE status = 'running';
CREATE INDEX bulk_operations_created ON offboard.bulk_operations (created_at DESC, id);

-- One row a second, written by every worker process's sweeper: the step attempts that
-- ended in that second in that process are added in (several processes add into one row),
-- gauges are the last writer's. Kept for an hour.
CREATE TABLE offboard.metric_samples (
    at               timestamptz PRIMARY KEY,
    steps_succeeded  bigint NOT NULL DEFAULT 0,
    steps_failed     bigint NOT NULL DEFAULT 0,
    steps_retried    bigint NOT NULL DEFAULT 0,
    steps_dead       bigint NOT NULL DEFAULT 0,
    -- Attempt durations in fixed buckets (upper bounds in src/samples.rs), summed.
    duration_buckets bigint[] NOT NULL,
    in_flight        bigint NOT NULL DEFAULT 0,
    queue_depth      bigint
);
