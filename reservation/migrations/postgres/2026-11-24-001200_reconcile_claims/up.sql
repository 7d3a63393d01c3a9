-- Replicas' reconcilers claim the reservations they settle: claimed_until
-- is when the claim of a reconciler that died lets another take it.
ALTER TABLE reservations ADD COLUMN claimed_until TIMESTAMP;
