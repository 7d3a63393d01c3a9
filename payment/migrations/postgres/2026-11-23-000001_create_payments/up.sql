-- One payment per reservation: the unique constraint makes ApprovePayment idempotent.
-- Instants are UTC.
CREATE TABLE payments (
    payment_id     TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL UNIQUE,
    customer_id    TEXT NOT NULL,
    cleaner_id     TEXT NOT NULL,
    address        TEXT NOT NULL,
    scheduled_at   TIMESTAMP,
    amount_units   BIGINT NOT NULL,
    currency_code  TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('PENDING', 'APPROVED', 'DECLINED', 'CANCELLED')),
    decline_reason TEXT,
    create_time    TIMESTAMP NOT NULL,
    update_time    TIMESTAMP NOT NULL
);
