-- The events seen per reservation; each view is recomputed from them, so it
-- is the same whatever order and repetition they arrived in.
CREATE TABLE view_events (
    event_id       TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL,
    envelope       BYTEA NOT NULL
);
CREATE INDEX view_events_by_reservation ON view_events (reservation_id);

-- The current view (an encoded ssak3.mypage.v1.ReservationView) per reservation.
CREATE TABLE reservation_views (
    reservation_id TEXT PRIMARY KEY,
    customer_id    TEXT NOT NULL,
    cleaner_id     TEXT NOT NULL,
    sort_time      TIMESTAMP NOT NULL,
    update_time    TIMESTAMP NOT NULL,
    view           BYTEA NOT NULL
);
CREATE INDEX reservation_views_by_customer ON reservation_views (customer_id, sort_time, reservation_id);
CREATE INDEX reservation_views_by_cleaner ON reservation_views (cleaner_id, sort_time, reservation_id);
