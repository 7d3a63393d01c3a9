-- Instants are UTC. (customer_id, request_id) makes CreateReservation idempotent.
CREATE TABLE reservations (
    reservation_id   TEXT PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    cleaner_id       TEXT NOT NULL,
    address          TEXT NOT NULL,
    scheduled_at     TIMESTAMP NOT NULL,
    service_type     TEXT NOT NULL,
    note             TEXT NOT NULL,
    price_units      BIGINT NOT NULL,
    currency_code    TEXT NOT NULL,
    state            TEXT NOT NULL
        CHECK (state IN ('PENDING_PAYMENT', 'CONFIRMED', 'CLEANED', 'CANCELLED', 'REJECTED')),
    payment_id       TEXT,
    rejection_reason TEXT,
    -- Set when a payment that may have gone through must be cancelled.
    void_payment     BOOLEAN NOT NULL DEFAULT FALSE,
    version          BIGINT NOT NULL,
    create_time      TIMESTAMP NOT NULL,
    update_time      TIMESTAMP NOT NULL,
    UNIQUE (customer_id, request_id)
);
CREATE INDEX reservations_by_state ON reservations (state, update_time);
CREATE INDEX reservations_by_cleaner ON reservations (cleaner_id, scheduled_at);
