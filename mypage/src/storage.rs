//! The read model's tables: the events seen per reservation and the view
//! computed from them.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use prost::Message as _;
use ssak3_common::{
    changes::Changes,
    db::{DbConnection, Schema},
    events::inbox,
    ids::{CompanyId, CustomerId},
    paging, time, watch,
};
use ssak3_proto::{events::v1::Event, mypage::v1::ReservationView};

use crate::projection;

/// My page's tables: the events seen, the views, and its inbox.
pub const SCHEMA: Schema = Schema {
    postgres: &[
        inbox::POSTGRES_MIGRATIONS,
        diesel_migrations::embed_migrations!("migrations/postgres"),
    ],
    sqlite: &[
        inbox::SQLITE_MIGRATIONS,
        diesel_migrations::embed_migrations!("migrations/sqlite"),
    ],
};

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

diesel::allow_tables_to_appear_in_same_query!(view_events, reservation_views);

/// A query of the views, built step by step.
type ViewQuery<'a> =
    reservation_views::BoxedQuery<'a, <DbConnection as diesel::Connection>::Backend>;

/// Whose views to list: a customer's reservations or a company's jobs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Customer(CustomerId),
    Company(CompanyId),
}

impl Owner {
    pub fn sees(&self, view: &ReservationView) -> bool {
        match self {
            Self::Customer(id) => view.customer_id == id.as_str(),
            Self::Company(id) => view.cleaner_id == id.as_str(),
        }
    }

    /// The owner's row in the watch clock (`change_clock`).
    pub fn watch_key(&self) -> String {
        match self {
            Self::Customer(id) => Self::watch_key_of_customer(id.as_str()),
            Self::Company(id) => Self::watch_key_of_company(id.as_str()),
        }
    }

    fn watch_key_of_customer(id: &str) -> String {
        format!("customer:{id}")
    }

    fn watch_key_of_company(id: &str) -> String {
        format!("cleaner:{id}")
    }

    fn filter<'a>(&self, query: ViewQuery<'a>) -> ViewQuery<'a> {
        match self {
            Self::Customer(id) => {
                query.filter(reservation_views::customer_id.eq(id.as_str().to_owned()))
            }
            Self::Company(id) => {
                query.filter(reservation_views::cleaner_id.eq(id.as_str().to_owned()))
            }
        }
    }
}

/// A view just stored: whose watchers hear of it, at which position.
#[derive(Debug)]
pub struct ViewChange {
    watch_keys: [String; 2],
    position: watch::Position,
}

impl ViewChange {
    /// Once the transaction that stored the view committed: the watchers of
    /// this process hear of it now on SQLite (on PostgreSQL, every
    /// replica's heard of it at the commit).
    pub fn committed(&self, changes: &Changes) {
        for key in &self.watch_keys {
            changes.committed(key, self.position);
        }
    }
}

/// The watch keys of a view's owners: its customer and its company.
fn watch_keys(view: &ReservationView) -> [String; 2] {
    [
        Owner::watch_key_of_customer(&view.customer_id),
        Owner::watch_key_of_company(&view.cleaner_id),
    ]
}

/// Adds `event` to its reservation's events and recomputes the view.
/// The caller has checked the inbox in the same transaction.
pub fn apply(
    conn: &mut DbConnection,
    changes: &Changes,
    event: &Event,
) -> QueryResult<Option<ViewChange>> {
    lock_reservation(conn, &event.reservation_id)?;
    diesel::insert_into(view_events::table)
        .values((
            view_events::event_id.eq(&event.event_id),
            view_events::reservation_id.eq(&event.reservation_id),
            view_events::envelope.eq(event.encode_to_vec()),
        ))
        .execute(conn)?;
    project_stored(conn, changes, &event.reservation_id)
}

/// Recomputes the view of `reservation_id` from its stored events and
/// stores it; its update_time is the next watch position of its customer
/// and its company, and the change is marked for their watchers on every
/// replica. The caller holds the reservation's lock.
fn project_stored(
    conn: &mut DbConnection,
    changes: &Changes,
    reservation_id: &str,
) -> QueryResult<Option<ViewChange>> {
    let envelopes: Vec<Vec<u8>> = view_events::table
        .filter(view_events::reservation_id.eq(reservation_id))
        .select(view_events::envelope)
        .load(conn)?;
    let events = envelopes
        .iter()
        .map(|bytes| Event::decode(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    let Some(mut view) = projection::project(&events) else {
        return Ok(None);
    };
    let sort_time = events
        .iter()
        .filter_map(|e| e.occurred_at.as_ref().and_then(time::from_timestamp))
        .min()
        .unwrap_or_else(time::now)
        .naive_utc();
    let [customer, company] = watch_keys(&view);
    let update_time = watch::next_position(conn, &[&customer, &company])?;
    view.update_time = Some(time::to_timestamp(time::from_db(update_time)));
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
    let watch_keys = [customer, company];
    for key in &watch_keys {
        changes.mark(conn, key, update_time)?;
    }
    Ok(Some(ViewChange {
        watch_keys,
        position: update_time,
    }))
}

/// Reservations with events but no view (their views were dropped by a
/// migration that changed what a view holds), at most `limit` of them.
pub fn find_unprojected(conn: &mut DbConnection, limit: i64) -> QueryResult<Vec<String>> {
    view_events::table
        .filter(diesel::dsl::not(view_events::reservation_id.eq_any(
            reservation_views::table.select(reservation_views::reservation_id),
        )))
        .select(view_events::reservation_id)
        .distinct()
        .limit(limit)
        .load(conn)
}

/// What rebuilding a view did.
#[derive(Debug)]
pub enum Rebuilt {
    /// The view was there already (another replica rebuilt it).
    Present,
    /// The view was stored anew.
    Stored(ViewChange),
    /// Its events make no view.
    NoView,
}

/// Rebuilds the view of a reservation that has none from its stored events.
pub fn rebuild(
    conn: &mut DbConnection,
    changes: &Changes,
    reservation_id: &str,
) -> QueryResult<Rebuilt> {
    lock_reservation(conn, reservation_id)?;
    let missing = reservation_views::table
        .find(reservation_id)
        .count()
        .get_result::<i64>(conn)?
        == 0;
    if !missing {
        return Ok(Rebuilt::Present);
    }
    Ok(project_stored(conn, changes, reservation_id)?.map_or(Rebuilt::NoView, Rebuilt::Stored))
}

/// Serialises the recomputation of one reservation across replicas on
/// PostgreSQL (SQLite has a single writer already).
fn lock_reservation(conn: &mut DbConnection, reservation_id: &str) -> QueryResult<()> {
    if matches!(conn, DbConnection::Postgres(_)) {
        ssak3_common::db::prepared("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind::<diesel::sql_types::Text, _>(reservation_id)
            .execute(conn)?;
    }
    Ok(())
}

fn decode(row: (Vec<u8>, NaiveDateTime)) -> QueryResult<(ReservationView, NaiveDateTime)> {
    let view = ReservationView::decode(row.0.as_slice())
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
    Ok((view, row.1))
}

/// One reservation's view.
pub fn find(
    conn: &mut DbConnection,
    reservation_id: &ssak3_common::ids::ReservationId,
) -> QueryResult<Option<ReservationView>> {
    reservation_views::table
        .find(reservation_id.as_str())
        .select((reservation_views::view, reservation_views::sort_time))
        .first(conn)
        .optional()?
        .map(|row| decode(row).map(|(view, _)| view))
        .transpose()
}

/// An owner's views, newest booking first (by sort time, then id), after
/// (older than) `after`; each with its sort time.
pub fn list(
    conn: &mut DbConnection,
    owner: &Owner,
    after: Option<&paging::Cursor>,
    limit: i64,
) -> QueryResult<Vec<(ReservationView, NaiveDateTime)>> {
    let mut query = owner.filter(reservation_views::table.into_boxed());
    if let Some(cursor) = after {
        query = query.filter(
            reservation_views::sort_time
                .lt(cursor.at)
                .or(reservation_views::sort_time
                    .eq(cursor.at)
                    .and(reservation_views::reservation_id.lt(cursor.id.clone()))),
        );
    }
    query
        .order((
            reservation_views::sort_time.desc(),
            reservation_views::reservation_id.desc(),
        ))
        .limit(limit)
        .select((reservation_views::view, reservation_views::sort_time))
        .load(conn)?
        .into_iter()
        .map(decode)
        .collect()
}

/// An owner's views that changed after `position`, in the order they
/// changed: what a watch replays.
pub fn changed_after(
    conn: &mut DbConnection,
    owner: &Owner,
    position: watch::Position,
    limit: i64,
) -> QueryResult<Vec<ReservationView>> {
    owner
        .filter(reservation_views::table.into_boxed())
        .filter(reservation_views::update_time.gt(position))
        .order(reservation_views::update_time.asc())
        .limit(limit)
        .select((reservation_views::view, reservation_views::sort_time))
        .load(conn)?
        .into_iter()
        .map(|row| decode(row).map(|(view, _)| view))
        .collect()
}
