DROP TABLE change_clock;
