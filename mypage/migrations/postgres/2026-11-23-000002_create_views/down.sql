DROP TABLE reservation_views;
DROP TABLE view_events;
