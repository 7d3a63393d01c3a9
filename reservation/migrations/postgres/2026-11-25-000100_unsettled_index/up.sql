-- The reconciler looks for the reservations still to settle: pending
-- payment, or with a payment to void. An index of those alone finds them
-- without reading the settled ones (the index on every reservation's state
-- could not serve its OR, so each round scanned the table), stays as small
-- as the reservations in flight, and is left as a booking is confirmed.
-- Built before the old index is dropped: while it reads the table, writes
-- to reservations wait (reads go on); the drop is brief.
CREATE INDEX reservations_unsettled ON reservations (update_time)
    WHERE state = 'PENDING_PAYMENT' OR void_payment;
DROP INDEX reservations_by_state;
