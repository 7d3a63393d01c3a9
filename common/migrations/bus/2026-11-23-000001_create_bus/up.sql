-- The in-process event bus of the one-process mode: one row per event per
-- subscribing queue, deleted when the consumer has committed it.
CREATE TABLE bus_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    queue        TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    routing_key  TEXT NOT NULL,
    payload      BLOB NOT NULL,
    traceparent  TEXT,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    available_at TIMESTAMP NOT NULL,
    -- Set when the message is dead-lettered: it stays for inspection.
    dead_reason  TEXT
);
CREATE INDEX bus_messages_ready ON bus_messages (queue, dead_reason, available_at, id);
