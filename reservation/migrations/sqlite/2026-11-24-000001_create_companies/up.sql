-- The cleaning companies customers may book; operators register them.
CREATE TABLE companies (
    company_id   TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    create_time  TIMESTAMP NOT NULL
);
