-- A vendor's uninstall callback carries a key derived from the install, so two runs that
-- tell the vendor of one shared install (two admins leaving together) send one
-- `webhook-id`: the key is no longer unique per row.
ALTER TABLE offboard.outbound_calls DROP CONSTRAINT outbound_calls_idempotency_key_key;
CREATE INDEX outbound_calls_idempotency_key ON offboard.outbound_calls (idempotency_key);
