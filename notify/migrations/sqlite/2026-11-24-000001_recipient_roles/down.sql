DROP INDEX notifications_by_recipient;
CREATE INDEX notifications_by_recipient ON notifications (recipient_id, create_time, notification_id);
ALTER TABLE notifications DROP COLUMN recipient_role;
