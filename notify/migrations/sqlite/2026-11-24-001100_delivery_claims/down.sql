DROP INDEX notifications_to_deliver;
CREATE INDEX notifications_to_deliver ON notifications (delivery_state, next_attempt_at);
ALTER TABLE notifications DROP COLUMN claimed_until;
ALTER TABLE notifications DROP COLUMN endpoint;
