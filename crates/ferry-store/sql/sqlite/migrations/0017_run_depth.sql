-- How deep a run is nested: 0 for a run started through the API, one more than its
-- parent's for a run started by a job of kind `workflow` (ferry-worker's
-- `kinds/workflow.rs`, which refuses past its bound so that a workflow that starts
-- itself cannot recurse for ever).
ALTER TABLE runs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
