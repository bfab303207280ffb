-- Issue 12: review_automations read every automation and assignment rule of the user's
-- company, twice, to find the few the user created or is named in: 2.2 ms and 127
-- buffers a call in `bench layoff` (pg_stat_statements, 2026-12-04), the costliest step
-- of a deactivation, and growing with the company — a layoff of N users read the
-- company's automations 2N times. The reference CRM store now finds them by user: the
-- automations a user created by (company, creator), those naming the user in a trigger
-- and the assignment rules assigning to them by their arrays' GIN indexes (the step and
-- the preview ask `@> ARRAY[user]`, which these answer; `= ANY (…)` is not indexable).
CREATE INDEX automations_creator ON crm.automations (company_id, creator_id);
CREATE INDEX automations_trigger_users ON crm.automations USING gin (trigger_user_ids);
CREATE INDEX assignment_rules_assignees ON crm.assignment_rules USING gin (assignee_ids);
