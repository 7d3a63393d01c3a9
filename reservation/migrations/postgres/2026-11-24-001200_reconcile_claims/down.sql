ALTER TABLE reservations DROP COLUMN claimed_until;
