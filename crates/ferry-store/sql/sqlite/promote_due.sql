-- Makes the queue's scheduled and retrying jobs whose time has come ready to claim.
UPDATE jobs SET state = 'queued', updated_at = ?2
WHERE queue = ?1 AND state IN ('scheduled', 'retrying') AND run_at <= ?2
