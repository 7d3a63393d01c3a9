//! The read model's tables: the events seen per reservation and the view
//! computed from them.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use prost::Message as _;
use ssak3_common::{db::DbConnection, paging, time};
use ssak3_proto::{events::v1::Event, mypage::v1::ReservationView};

use crate::projection;

pub const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
pub const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");

diesel::table! {
    view_events (event_id) {
        event_id -> Text,
        reservation_id -> Text,
        envelope -> Binary,
    }
}

diesel::table! {
    reservation_views (reservation_id) {
        reservation_id -> Text,
        customer_id -> Text,
        cleaner_id -> Text,
        sort_time -> Timestamp,
        update_time -> Timestamp,
        view -> Binary,
    }
}

/// Whose views to list.
#[derive(Clone, Debug)]
pub enum Owner {
    Customer(String),
    Cleaner(String),
}

impl Owner {
    pub fn sees(&self, view: &ReservationView) -> bool {
        match self {
            Self::Customer(id) => &view.customer_id == id,
            Self::Cleaner(id) => &view.cleaner_id == id,
        }
    }
}

/// Adds `event` to its reservation's events and recomputes the view.
/// The caller has checked the inbox in the same transaction.
pub fn apply(conn: &mut DbConnection, event: &Event) -> QueryResult<Option<ReservationView>> {
    lock_reservation(conn, &event.reservation_id)?;
    diesel::insert_into(view_events::table)
        .values((
            view_events::event_id.eq(&event.event_id),
            view_events::reservation_id.eq(&event.reservation_id),
            view_events::envelope.eq(event.encode_to_vec()),
        ))
        .execute(conn)?;
    let envelopes: Vec<Vec<u8>> = view_events::table
        .filter(view_events::reservation_id.eq(&event.reservation_id))
        .select(view_events::envelope)
        .load(conn)?;
    let events = envelopes
        .iter()
        .map(|bytes| Event::decode(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    let Some(view) = projection::project(&events) else {
        return Ok(None);
    };
    let sort_time = events
        .iter()
        .filter_map(|e| e.occurred_at.as_ref().and_then(time::from_timestamp))
        .min()
        .unwrap_or_else(time::now)
        .naive_utc();
    let update_time = view
        .update_time
        .as_ref()
        .and_then(time::from_timestamp)
        .unwrap_or_else(time::now)
        .naive_utc();
    // A view exists only once an earlier event of the reservation was applied.
    if events.len() > 1 {
        diesel::delete(reservation_views::table.find(&view.reservation_id)).execute(conn)?;
    }
    diesel::insert_into(reservation_views::table)
        .values((
            reservation_views::reservation_id.eq(&view.reservation_id),
            reservation_views::customer_id.eq(&view.customer_id),
            reservation_views::cleaner_id.eq(&view.cleaner_id),
            reservation_views::sort_time.eq(sort_time),
            reservation_views::update_time.eq(update_time),
            reservation_views::view.eq(view.encode_to_vec()),
        ))
        .execute(conn)?;
    Ok(Some(view))
}

/// Serialises the recomputation of one reservation across replicas on
/// PostgreSQL (SQLite has a single writer already).
fn lock_reservation(conn: &mut DbConnection, reservation_id: &str) -> QueryResult<()> {
    if let DbConnection::Postgres(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind::<diesel::sql_types::Text, _>(reservation_id)
            .execute(pg)?;
    }
    Ok(())
}

fn decode(row: (Vec<u8>, NaiveDateTime)) -> QueryResult<(ReservationView, NaiveDateTime)> {
    let view = ReservationView::decode(row.0.as_slice())
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    Ok((view, row.1))
}

/// One reservation's view.
pub fn find(conn: &mut DbConnection, reservation_id: &str) -> QueryResult<Option<ReservationView>> {
    reservation_views::table
        .find(reservation_id)
        .select((reservation_views::view, reservation_views::sort_time))
        .first(conn)
        .optional()?
        .map(|row| decode(row).map(|(view, _)| view))
        .transpose()
}

/// An owner's views, oldest first, after `after`; each with its sort time.
pub fn list(
    conn: &mut DbConnection,
    owner: &Owner,
    after: Option<&paging::Cursor>,
    limit: i64,
) -> QueryResult<Vec<(ReservationView, NaiveDateTime)>> {
    let mut query = reservation_views::table.into_boxed();
    query = match owner {
        Owner::Customer(id) => query.filter(reservation_views::customer_id.eq(id.clone())),
        Owner::Cleaner(id) => query.filter(reservation_views::cleaner_id.eq(id.clone())),
    };
    if let Some(cursor) = after {
        query = query.filter(
            reservation_views::sort_time
                .gt(cursor.at)
                .or(reservation_views::sort_time
                    .eq(cursor.at)
                    .and(reservation_views::reservation_id.gt(cursor.id.clone()))),
        );
    }
    query
        .order((
            reservation_views::sort_time.asc(),
            reservation_views::reservation_id.asc(),
        ))
        .limit(limit)
        .select((reservation_views::view, reservation_views::sort_time))
        .load(conn)?
        .into_iter()
        .map(decode)
        .collect()
}
