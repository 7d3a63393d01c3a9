//! The inbox: the ids of the events a consumer has applied, written in the
//! transaction that applies them. Every consuming service has the table
//! `inbox(event_id PRIMARY KEY, event_type, processed_at)`, created by
//! [`POSTGRES_MIGRATIONS`] and [`SQLITE_MIGRATIONS`] in its schema.

use diesel::prelude::*;
use ssak3_proto::events::v1::Event;

use crate::{
    db::{DbConnection, prepared},
    time,
};

/// The inbox table, for a consuming service's [`crate::db::Schema`].
pub const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/inbox/postgres");
pub const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/inbox/sqlite");

diesel::table! {
    inbox (event_id) {
        event_id -> Text,
        event_type -> Text,
        processed_at -> Timestamp,
    }
}

/// Records `event` as processed; false when it was already, in which case
/// the caller must leave everything as it is. One statement: insert unless
/// present.
pub fn record(conn: &mut DbConnection, event: &Event) -> QueryResult<bool> {
    use diesel::sql_types::{Text, Timestamp};
    // A concurrent duplicate makes this insert fail on the key and its
    // transaction roll back; the delivery is retried and then inserts nothing.
    let inserted = prepared(
        "INSERT INTO inbox (event_id, event_type, processed_at) \
         SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM inbox WHERE event_id = $1)",
    )
    .bind::<Text, _>(&event.event_id)
    .bind::<Text, _>(&event.event_type)
    .bind::<Timestamp, _>(time::now().naive_utc())
    .execute(conn)?;
    Ok(inserted == 1)
}

/// True when the event has been applied already.
pub fn seen(conn: &mut DbConnection, event_id: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        inbox::table.filter(inbox::event_id.eq(event_id)),
    ))
    .get_result(conn)
}
