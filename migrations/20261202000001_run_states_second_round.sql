-- The run states and actions of the second round, declared once so the features that add
-- them (cancel that stops, scheduled runs, approval, undo of a transfer) share one list:
--   scheduled         waits for its effective_at; the user's active run
--   awaiting_approval waits for a second admin; the user's active run
--   canceling         told to stop; still the user's active run until no step runs
--   expired/rejected  an approval that ran out or was refused (final)
ALTER TABLE offboard.runs DROP CONSTRAINT runs_status_check;
ALTER TABLE offboard.runs ADD CONSTRAINT runs_status_check CHECK (status IN
    ('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling',
     'succeeded', 'failed', 'canceled', 'expired', 'rejected'));

ALTER TABLE offboard.runs DROP CONSTRAINT runs_action_check;
ALTER TABLE offboard.runs ADD CONSTRAINT runs_action_check CHECK (action IN
    ('deactivate', 'delete', 'deactivate_and_delete', 'redact', 'reactivate', 'undo_transfer'));

-- One active run per user, with the new waiting and stopping states counted as active.
DROP INDEX offboard.runs_one_active_per_user;
CREATE UNIQUE INDEX runs_one_active_per_user ON offboard.runs (company_id, user_id)
    WHERE status IN ('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed');
