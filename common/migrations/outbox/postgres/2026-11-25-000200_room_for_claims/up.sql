-- A row is claimed moments after it is written. Room left on each page
-- lets the claim, which changes no indexed column, stay on the row's page
-- as a heap-only update: no index entries for it. (Marking the row sent
-- changes `sent_at`, which `outbox_unsent` reads, so that one adds them.)
ALTER TABLE outbox SET (fillfactor = 50);
