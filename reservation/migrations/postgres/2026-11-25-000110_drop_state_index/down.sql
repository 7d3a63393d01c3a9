CREATE INDEX CONCURRENTLY reservations_by_state ON reservations (state, update_time);
