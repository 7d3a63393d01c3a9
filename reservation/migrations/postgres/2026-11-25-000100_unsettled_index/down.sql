DROP INDEX CONCURRENTLY IF EXISTS reservations_unsettled;
