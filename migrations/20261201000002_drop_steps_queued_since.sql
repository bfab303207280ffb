-- Every step passes through `queued`, and each of those row versions cost an entry in this
-- index, for one reader: the sweeper's search, once a second, for queued steps whose Redis
-- task was lost. It now reads steps_in_flight (queued or running, at most
-- OFFBOARD_MAX_IN_FLIGHT live entries) and filters on queued_at.
DROP INDEX offboard.steps_queued_since;
