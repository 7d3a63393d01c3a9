CREATE INDEX reservations_by_state ON reservations (state, update_time);
DROP INDEX reservations_unsettled;
