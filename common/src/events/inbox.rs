//! The inbox: the ids of the events a consumer has applied, written in the
//! transaction that applies them. Every consuming service has the table
//! `inbox(event_id PRIMARY KEY, event_type, processed_at)` (see its migrations).

use diesel::prelude::*;
use ssak3_proto::events::v1::Event;

use crate::{db::DbConnection, time};

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
    if seen(conn, &event.event_id)? {
        return Ok(false);
    }
    // A concurrent duplicate makes this insert fail and its transaction roll
    // back; the delivery is retried and then finds the id above.
    diesel::insert_into(inbox::table)
        .values((
            inbox::event_id.eq(&event.event_id),
            inbox::event_type.eq(&event.event_type),
            inbox::processed_at.eq(time::now().naive_utc()),
        ))
        .execute(conn)?;
    Ok(true)
}

/// True when the event has been applied already.
pub fn seen(conn: &mut DbConnection, event_id: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        inbox::table.filter(inbox::event_id.eq(event_id)),
    ))
    .get_result(conn)
}

/// How many events this consumer has applied (for tests and operators).
pub fn count(conn: &mut DbConnection) -> QueryResult<i64> {
    inbox::table.count().get_result(conn)
}
