-- A recipient is a role and an id: a customer and a company may share a
-- name and still never share an inbox. Payments are told to companies,
-- completed cleanings to customers.
ALTER TABLE notifications ADD COLUMN recipient_role TEXT NOT NULL DEFAULT 'company'
    CHECK (recipient_role IN ('customer', 'company'));
UPDATE notifications SET recipient_role = 'customer' WHERE kind = 'CLEANING_COMPLETED';
DROP INDEX notifications_by_recipient;
CREATE INDEX notifications_by_recipient
    ON notifications (recipient_role, recipient_id, create_time, notification_id);
