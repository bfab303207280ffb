-- Approval before the irreversible: when a company's policy asks for it, a `delete` or
-- `deactivate_and_delete` run is written `awaiting_approval` (its steps pending) and
-- waits for a second admin of the company — not the one who asked — to approve or reject
-- it; unanswered, it expires after the policy's approval_ttl_hours.
ALTER TABLE offboard.runs
    ADD COLUMN approval_expires_at timestamptz,
    -- The admin who approved or rejected the run.
    ADD COLUMN approver_user_id bigint;
CREATE INDEX runs_approval_expiry ON offboard.runs (approval_expires_at)
    WHERE status = 'awaiting_approval';

ALTER TABLE offboard.offboarding_policies
    ADD COLUMN require_approval boolean NOT NULL DEFAULT false,
    ADD COLUMN approval_ttl_hours integer NOT NULL DEFAULT 168
        CHECK (approval_ttl_hours BETWEEN 1 AND 2160);
