DROP TABLE migrated_with;
