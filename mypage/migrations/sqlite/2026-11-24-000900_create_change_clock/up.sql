-- The last watch position given out per customer and per company
-- (ssak3_common::watch): a view takes its update_time from it, so that the
-- views one caller sees are strictly ordered in the order they change, and a
-- watch can resume.
CREATE TABLE change_clock (
    owner    TEXT PRIMARY KEY,
    position TIMESTAMP NOT NULL
);
CREATE INDEX reservation_views_changed_by_customer ON reservation_views (customer_id, update_time);
CREATE INDEX reservation_views_changed_by_cleaner ON reservation_views (cleaner_id, update_time);

-- Views stored before now carry the status as a string and the events' time
-- as update_time; they are rebuilt from view_events at start-up.
DELETE FROM reservation_views;
