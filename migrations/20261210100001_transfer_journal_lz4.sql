-- The journal's id arrays are compressed with lz4 instead of PostgreSQL's default pglz.
-- A batch's row carries up to 5,000 item ids and their 5,000 new owners (40 kB each) that
-- PostgreSQL compresses before it stores them; with pglz that compression was the largest
-- part of writing the journal. Measured on PostgreSQL 15 (200 such rows, less the time to
-- build the arrays; lab/RESULTS.md): pglz 2.4-2.9 ms a row, lz4 0.24-0.30 ms; stored, the
-- ids take 16.3 kB with pglz and 20.1 kB with lz4. Only values written from now on use
-- it; rows already written keep pglz and read as before.
--
-- A server built without lz4 (every PostgreSQL image and Debian's package have it) keeps
-- pglz rather than fail the migration.
DO $$
BEGIN
    ALTER TABLE offboard.transfer_journal
        ALTER COLUMN item_ids SET COMPRESSION lz4,
        ALTER COLUMN new_owner_ids SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4: the transfer journal keeps pglz';
END
$$;
