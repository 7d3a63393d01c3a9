-- Replicas claim the rows they relay: claimed_until is when a claim that
-- was not followed by sent_at (the replica died) lets another replica
-- take the row.
ALTER TABLE outbox ADD COLUMN claimed_until TIMESTAMP;
