CREATE TABLE payments_prev (
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
INSERT INTO payments_prev
SELECT payment_id, reservation_id, COALESCE(customer_id, ''), COALESCE(cleaner_id, ''),
    COALESCE(address, ''), scheduled_at, COALESCE(amount_units, 0), COALESCE(currency_code, 'KRW'),
    state, decline_reason, create_time, update_time
FROM payments;
DROP TABLE payments;
ALTER TABLE payments_prev RENAME TO payments;
