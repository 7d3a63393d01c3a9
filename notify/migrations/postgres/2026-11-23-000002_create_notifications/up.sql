-- One notification per event; delivery is tracked here and retried with backoff.
CREATE TABLE notifications (
    notification_id TEXT PRIMARY KEY,
    recipient_id    TEXT NOT NULL,
    kind            TEXT NOT NULL
        CHECK (kind IN ('PAYMENT_APPROVED', 'PAYMENT_CANCELLED', 'CLEANING_COMPLETED')),
    reservation_id  TEXT NOT NULL,
    message         TEXT NOT NULL,
    event_id        TEXT NOT NULL UNIQUE,
    create_time     TIMESTAMP NOT NULL,
    delivery_state  TEXT NOT NULL CHECK (delivery_state IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_error      TEXT
);
CREATE INDEX notifications_by_recipient ON notifications (recipient_id, create_time, notification_id);
CREATE INDEX notifications_to_deliver ON notifications (delivery_state, next_attempt_at);
