-- A run's steps, history and idempotency key are written by the one statement that writes
-- the run (ledger::runs::insert), and later rows only by transitions of a step or run that
-- exists; nothing deletes runs. The foreign keys to offboard.runs checked that again, one
-- trigger query per row: 17 per enqueue. Worse, each connection plans that query once and
-- keeps the plan: a connection that first inserted while offboard.runs was empty (a new
-- install, the first minute before autovacuum analyzes it) scanned the whole table for
-- every step row it wrote afterwards — 75 % of PostgreSQL's CPU in `offboard bench
-- enqueue` (perf: AfterTriggerEndQuery -> SPI_execute_snapshot -> SeqScan on runs).
-- scheduled_purges keeps its key: one insert per finished deactivation.
ALTER TABLE offboard.steps DROP CONSTRAINT steps_run_id_fkey;
ALTER TABLE offboard.run_events DROP CONSTRAINT run_events_run_id_fkey;
ALTER TABLE offboard.idempotency_keys DROP CONSTRAINT idempotency_keys_run_id_fkey;
