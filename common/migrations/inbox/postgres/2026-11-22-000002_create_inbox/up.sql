-- Inbox: ids of the events applied, written in the transaction that applied
-- them, so that a redelivered event changes nothing.
CREATE TABLE IF NOT EXISTS inbox (
    event_id     TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    processed_at TIMESTAMP NOT NULL
);
