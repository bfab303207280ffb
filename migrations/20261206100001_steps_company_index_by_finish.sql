-- Issue 17: the dispatcher's pass reads each company's ready steps from
-- steps_ready_by_company, in the order it takes them and only as far as the company's share.
-- On statistics that say one step a company is ready (a ledger never analyzed: a new
-- deployment, a layoff before autovacuum's first round) the planner took every ready step
-- of the company by steps_company_status (company_id, status, finished_at) instead, its
-- status narrowing the scan, and sorted them, a sort it costed as free: 290 rows a company
-- and 3,742 of a pass's 9,083 buffers in `bench steps`. The same columns with status last
-- serve what the index is for — a company's steps counted by status and finished within
-- the throughput window, from the index alone (/v1/stats for a company-scoped token) — and
-- give the pass nothing to narrow its scan by, so it reads the index made for it.
DROP INDEX offboard.steps_company_status;
CREATE INDEX steps_company_finished ON offboard.steps (company_id, finished_at, status);
