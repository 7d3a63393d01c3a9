-- The reconciler looks for the reservations still to settle: pending
-- payment, or with a payment to void. An index of those alone finds them
-- without reading the settled ones (the index on every reservation's state
-- could not serve its OR, so each round scanned the table), stays as small
-- as the reservations in flight, and is left as a booking is confirmed.
-- Built without blocking the bookings of replicas still running (outside a
-- transaction, see metadata.toml). A build that fails leaves an invalid
-- index of this name behind, and the next start says that it exists: drop
-- it (DROP INDEX CONCURRENTLY reservations_unsettled) and start again.
CREATE INDEX CONCURRENTLY reservations_unsettled ON reservations (update_time)
    WHERE state = 'PENDING_PAYMENT' OR void_payment;
