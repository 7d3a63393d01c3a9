-- A payment is written pending and moments later moved to its outcome.
-- Room left on each page lets that move, which changes no indexed column,
-- stay on the row's page as a heap-only update: no index entries for it.
ALTER TABLE payments SET (fillfactor = 70);
