-- Idempotency keys expire (OFFBOARD_IDEMPOTENCY_RETENTION): the sweeper deletes the oldest
-- first, in bounded batches, through this index.
CREATE INDEX idempotency_keys_created ON offboard.idempotency_keys (created_at);
COMMENT ON COLUMN offboard.idempotency_keys.request_hash IS
    'hmac-sha256:<hex> of the request body under OFFBOARD_IDEMPOTENCY_SECRET (a plain sha256 hex in rows written before)';
