-- The transfer journal: per item a run moved, the item, its previous owner and its new
-- owner, so the transfer can be undone. One row per batch, written by the statement that
-- moves the batch (arrays, not a row per item: a 200,000-item run adds a few hundred
-- rows, not 200,000 index entries). `item_ids[i]` went from `previous_owner_id` to
-- `new_owner_ids[i]`. Ids only; no foreign keys, like the runs' other children.
CREATE TABLE offboard.transfer_journal (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id            uuid NOT NULL,
    company_id        bigint NOT NULL,
    -- An item type of the transfer plan (`deals`, …) or `dashboards`, `chatbot_playbooks`,
    -- `web_forms` (the hand-overs).
    item_type         text NOT NULL,
    previous_owner_id bigint NOT NULL,
    item_ids          bigint[] NOT NULL,
    new_owner_ids     bigint[] NOT NULL,
    CHECK (cardinality(item_ids) = cardinality(new_owner_ids) AND cardinality(item_ids) > 0)
);
CREATE INDEX transfer_journal_run ON offboard.transfer_journal (run_id, id);

-- An undo of a run's transfer is found by the run it undoes.
CREATE INDEX runs_undo_of ON offboard.runs ((params ->> 'undo_of'))
    WHERE action = 'undo_transfer';
