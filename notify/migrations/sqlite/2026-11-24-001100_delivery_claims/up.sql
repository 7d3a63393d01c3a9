-- Each notification is delivered to the webhook endpoint serving its
-- recipient (NULL: none, it was only logged), and replicas claim the
-- deliveries they make: claimed_until is when the claim of a replica that
-- died lets another take the delivery.
ALTER TABLE notifications ADD COLUMN endpoint TEXT;
ALTER TABLE notifications ADD COLUMN claimed_until TIMESTAMP;
-- Deliveries pending before endpoints had names went to the one webhook_url.
UPDATE notifications SET endpoint = 'default' WHERE delivery_state = 'PENDING';
DROP INDEX notifications_to_deliver;
CREATE INDEX notifications_to_deliver ON notifications (endpoint, next_attempt_at)
    WHERE delivery_state = 'PENDING';
