-- What a migration runs with: 1 is FILE, 2 MEMORY.
CREATE TABLE migrated_with AS SELECT temp_store FROM pragma_temp_store;
