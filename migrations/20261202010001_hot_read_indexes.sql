-- Indexes for the hot reads of /metrics, /v1/stats and the receipt (each checked with EXPLAIN):
-- a run's purge (receipt, cancel by reactivation) by run_id; steps and purges counted per
-- company and status (the dashboard's header for a company-scoped token), the steps' index
-- carrying finished_at so the throughput window is answered from the index alone.
CREATE INDEX scheduled_purges_run ON offboard.scheduled_purges (run_id);
CREATE INDEX steps_company_status ON offboard.steps (company_id, status, finished_at);
CREATE INDEX scheduled_purges_company_status ON offboard.scheduled_purges (company_id, status, due_at);
