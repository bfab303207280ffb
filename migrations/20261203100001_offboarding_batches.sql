-- Bulk offboarding from a file: a batch is one submission of up to 10,000 rows. Its row
-- keeps what the answer said (the refused rows by row number, code and field: ids and
-- codes only) and who submitted it; the runs it created carry its id, so its progress is
-- read from them and an operator's filter, the run views and the audit export name it.
CREATE TABLE offboard.offboarding_batches (
    id              uuid PRIMARY KEY,
    -- 'token:operator' or 'token:company-<id>'.
    submitted_by    text NOT NULL,
    -- The company a scoped token is held to (it sees only its batches).
    company_scope   bigint,
    -- The companies of the rows it accepted (a batch of an unscoped token may span several).
    companies       bigint[] NOT NULL DEFAULT '{}',
    format          text NOT NULL CHECK (format IN ('json', 'ndjson', 'csv')),
    all_or_nothing  boolean NOT NULL,
    rows_total      integer NOT NULL,
    rows_accepted   integer NOT NULL DEFAULT 0,
    -- [{"row", "code", "field", "message", "company_id"}], at most 10,000 entries.
    refused         jsonb NOT NULL DEFAULT '[]',
    -- 'writing' while its chunks are written, then 'written' (or 'refused': all or nothing
    -- and a row was refused, no run created).
    status          text NOT NULL DEFAULT 'writing' CHECK (status IN ('writing', 'written', 'refused')),
    idempotency_key text,
    request_hash    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    written_at      timestamptz
);
CREATE UNIQUE INDEX offboarding_batches_key
    ON offboard.offboarding_batches (coalesce(company_scope, 0), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX offboarding_batches_created ON offboard.offboarding_batches (created_at DESC, id);
CREATE INDEX offboarding_batches_companies ON offboard.offboarding_batches USING gin (companies);

ALTER TABLE offboard.runs ADD COLUMN batch_id uuid REFERENCES offboard.offboarding_batches (id);
CREATE INDEX runs_batch ON offboard.runs (batch_id, id) WHERE batch_id IS NOT NULL;
