ALTER TABLE payments DROP CONSTRAINT payments_order_complete;
UPDATE payments
SET customer_id = '', cleaner_id = '', address = '', amount_units = 0, currency_code = 'KRW'
WHERE customer_id IS NULL;
ALTER TABLE payments
    ALTER COLUMN customer_id SET NOT NULL,
    ALTER COLUMN cleaner_id SET NOT NULL,
    ALTER COLUMN address SET NOT NULL,
    ALTER COLUMN amount_units SET NOT NULL,
    ALTER COLUMN currency_code SET NOT NULL;
ALTER TABLE payments DROP COLUMN version;
