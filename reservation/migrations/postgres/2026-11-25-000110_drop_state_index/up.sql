-- Replaced by reservations_unsettled; dropped without blocking the table
-- (outside a transaction, see metadata.toml).
DROP INDEX CONCURRENTLY IF EXISTS reservations_by_state;
