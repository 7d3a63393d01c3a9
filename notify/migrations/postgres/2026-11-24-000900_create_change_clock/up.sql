-- The last watch position given out per recipient (ssak3_common::watch):
-- notifications take their create_time from it, so that one recipient's are
-- strictly ordered in the order they commit, and a watch can resume.
CREATE TABLE change_clock (
    owner    TEXT PRIMARY KEY,
    position TIMESTAMP NOT NULL
);
