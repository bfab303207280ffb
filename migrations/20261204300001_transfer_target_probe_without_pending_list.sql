-- Issue 17: the enqueue's transfer-target rule probes runs_active_targets on every
-- deactivation. With GIN's fast update on (the default), every new run's entries waited in
-- the index's pending list, which every probe reads whole: 8,000 pending runs made a probe
-- 45 buffers and 0.3 ms of PostgreSQL, growing with the runs written since the last vacuum,
-- where the index itself answers in 3 buffers. Entries now go straight into the index (a
-- few microseconds more per run written); the pending list is merged now.
ALTER INDEX offboard.runs_active_targets SET (fastupdate = off);
SELECT gin_clean_pending_list('offboard.runs_active_targets'::regclass);
