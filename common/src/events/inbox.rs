//! The inbox: the ids of the events a consumer has applied, written in the
//! transaction that applies them. Every consuming service has the table
//! `inbox(event_id PRIMARY KEY, event_type, processed_at)`, created by
//! [`POSTGRES_MIGRATIONS`] and [`SQLITE_MIGRATIONS`] in its schema.

use std::{borrow::Borrow, collections::HashSet};

use diesel::{
    prelude::*,
    sql_types::{Text, Timestamp},
};
use ssak3_proto::events::v1::Event;

use crate::{
    db::{DbConnection, multi_row, returned, rows},
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
/// the caller must leave everything as it is.
pub fn record(conn: &mut DbConnection, event: &Event) -> QueryResult<bool> {
    Ok(record_all(conn, std::slice::from_ref(event))?[0])
}

/// Records `events` as processed, in one statement: for each, whether it
/// is new (false when it was recorded before, or earlier in `events`), in
/// order. A concurrent transaction recording one of them makes this wait
/// for its end, then skip the event if it committed; the rows are written
/// in the order of their ids, so two such transactions cannot deadlock.
pub fn record_all<E: Borrow<Event>>(
    conn: &mut DbConnection,
    events: &[E],
) -> QueryResult<Vec<bool>> {
    let mut distinct: Vec<&Event> = events.iter().map(Borrow::borrow).collect();
    distinct.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
    distinct.dedup_by(|a, b| a.event_id == b.event_id);
    if distinct.is_empty() {
        return Ok(Vec::new());
    }
    let now = time::now().naive_utc();
    let sql = format!(
        "INSERT INTO inbox (event_id, event_type, processed_at) VALUES {} \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id AS id",
        rows(distinct.len(), 3, 1)
    );
    let insert = distinct
        .iter()
        .fold(multi_row(sql, distinct.len()), |insert, e| {
            insert
                .bind::<Text, _>(e.event_id.as_str())
                .bind::<Text, _>(e.event_type.as_str())
                .bind::<Timestamp, _>(now)
        });
    let ids = || events.iter().map(|e| e.borrow().event_id.as_str());
    let new = returned(conn, insert, ids())?;
    // A repeat within `events` is not new: only its first is.
    let mut first = HashSet::new();
    Ok(ids()
        .zip(new)
        .map(|(id, new)| new && first.insert(id))
        .collect())
}

/// True when the event has been applied already.
pub fn seen(conn: &mut DbConnection, event_id: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        inbox::table.filter(inbox::event_id.eq(event_id)),
    ))
    .get_result(conn)
}
