-- A step is addressed by its run and its place in the run's plan: the primary key is
-- (run_id, position). The identity id it replaces cost every insert a sequence call, and
-- with UNIQUE (run_id, name) beside it every status transition (none of them is a HOT
-- update: status is indexed) wrote an entry in two unique indexes where one serves: a
-- step is looked up by name only with its run_id, which the new key's prefix answers.
-- Redis tasks, leases and outside calls carry (run_id, position) from this version on; a
-- task pushed by an older version names no run, is dropped by the worker, and its step is
-- pushed again by the sweeper like any lost task (OFFBOARD_REDELIVER_AFTER).

-- Outside calls name their step by position, converted from the id while it exists.
ALTER TABLE offboard.outbound_calls ADD COLUMN position integer;
UPDATE offboard.outbound_calls c SET position = s.position
FROM offboard.steps s WHERE s.id = c.step_id;
ALTER TABLE offboard.outbound_calls ALTER COLUMN position SET NOT NULL;
-- Drops UNIQUE (step_id, kind, target_id) and outbound_calls_run with it; the new unique
-- key's (run_id, position) prefix serves a run's and a step's calls.
ALTER TABLE offboard.outbound_calls DROP COLUMN step_id;
ALTER TABLE offboard.outbound_calls
    ADD CONSTRAINT outbound_calls_step_kind_target UNIQUE (run_id, position, kind, target_id);

ALTER TABLE offboard.steps DROP CONSTRAINT steps_run_id_name_key;
-- Drops steps_pkey and steps_ready_by_company (which ended in id) with it.
ALTER TABLE offboard.steps DROP COLUMN id;
ALTER TABLE offboard.steps ADD CONSTRAINT steps_pkey PRIMARY KEY (run_id, position);
-- The dispatcher's order among steps ready at one instant: the run, then the plan's order.
CREATE INDEX steps_ready_by_company ON offboard.steps (company_id, next_attempt_at, run_id, position)
    WHERE status = 'ready';
