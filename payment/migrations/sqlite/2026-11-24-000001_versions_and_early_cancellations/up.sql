-- Payments move by compare-and-set on `version`. A cancellation recorded
-- before any charge was asked for has no order: its order columns are NULL
-- (they held empty strings and 0 before). SQLite cannot relax NOT NULL in
-- place, so the table is rebuilt.
CREATE TABLE payments_next (
    payment_id     TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL UNIQUE,
    customer_id    TEXT,
    cleaner_id     TEXT,
    address        TEXT,
    scheduled_at   TIMESTAMP,
    amount_units   BIGINT,
    currency_code  TEXT,
    state          TEXT NOT NULL CHECK (state IN ('PENDING', 'APPROVED', 'DECLINED', 'CANCELLED')),
    decline_reason TEXT,
    version        BIGINT NOT NULL DEFAULT 1,
    create_time    TIMESTAMP NOT NULL,
    update_time    TIMESTAMP NOT NULL,
    CHECK (
        (customer_id IS NULL) = (cleaner_id IS NULL)
        AND (customer_id IS NULL) = (address IS NULL)
        AND (customer_id IS NULL) = (amount_units IS NULL)
        AND (customer_id IS NULL) = (currency_code IS NULL)
        AND (customer_id IS NOT NULL OR state = 'CANCELLED')
    )
);
INSERT INTO payments_next (payment_id, reservation_id, customer_id, cleaner_id, address,
    scheduled_at, amount_units, currency_code, state, decline_reason, version, create_time, update_time)
SELECT payment_id, reservation_id,
    CASE WHEN customer_id = '' AND state = 'CANCELLED' THEN NULL ELSE customer_id END,
    CASE WHEN customer_id = '' AND state = 'CANCELLED' THEN NULL ELSE cleaner_id END,
    CASE WHEN customer_id = '' AND state = 'CANCELLED' THEN NULL ELSE address END,
    scheduled_at,
    CASE WHEN customer_id = '' AND state = 'CANCELLED' THEN NULL ELSE amount_units END,
    CASE WHEN customer_id = '' AND state = 'CANCELLED' THEN NULL ELSE currency_code END,
    state, decline_reason, 1, create_time, update_time
FROM payments;
DROP TABLE payments;
ALTER TABLE payments_next RENAME TO payments;
