-- Where a batched step stood when its current attempt was claimed. An attempt whose worker
-- was lost after committing progress is not held against the step: only attempts that got
-- nowhere count toward quarantine.
ALTER TABLE offboard.steps ADD COLUMN done_at_claim bigint NOT NULL DEFAULT 0;
