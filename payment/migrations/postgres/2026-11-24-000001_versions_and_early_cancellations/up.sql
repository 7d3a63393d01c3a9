-- Payments move by compare-and-set on `version`. A cancellation recorded
-- before any charge was asked for has no order: its order columns are NULL
-- (they held empty strings and 0 before).
ALTER TABLE payments ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE payments
    ALTER COLUMN customer_id DROP NOT NULL,
    ALTER COLUMN cleaner_id DROP NOT NULL,
    ALTER COLUMN address DROP NOT NULL,
    ALTER COLUMN amount_units DROP NOT NULL,
    ALTER COLUMN currency_code DROP NOT NULL;
UPDATE payments
SET customer_id = NULL, cleaner_id = NULL, address = NULL, amount_units = NULL, currency_code = NULL
WHERE customer_id = '' AND state = 'CANCELLED';
ALTER TABLE payments ADD CONSTRAINT payments_order_complete CHECK (
    (customer_id IS NULL) = (cleaner_id IS NULL)
    AND (customer_id IS NULL) = (address IS NULL)
    AND (customer_id IS NULL) = (amount_units IS NULL)
    AND (customer_id IS NULL) = (currency_code IS NULL)
    AND (customer_id IS NOT NULL OR state = 'CANCELLED')
);
