//! The read model's tables: the events seen per reservation and the view
//! computed from them.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{Binary, Text, Timestamp},
};
use prost::Message as _;
use ssak3_common::{
    changes::Changes,
    db::{self, DbConnection, Schema},
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

/// Applies `events` in one go, each one new to the inbox added to its
/// reservation's events, and each reservation they touch projected anew
/// (once, however many of them it has here): for each event, in order, the
/// change of view it made, or `None` if it was seen before (the change of a
/// reservation with several new events goes with the first of them). A
/// statement per table, not per event; what it stores is what applying the
/// events one after the other would.
pub fn apply_all(
    conn: &mut DbConnection,
    changes: &Changes,
    events: &[Event],
) -> QueryResult<Vec<Option<ViewChange>>> {
    let new = inbox::record_all(conn, events)?;
    let fresh: Vec<&Event> = events
        .iter()
        .zip(&new)
        .filter_map(|(event, &new)| new.then_some(event))
        .collect();
    let mut reservations: Vec<&str> = fresh.iter().map(|e| e.reservation_id.as_str()).collect();
    reservations.sort_unstable();
    reservations.dedup();
    lock_reservations(conn, &reservations)?;
    if !fresh.is_empty() {
        let sql = format!(
            "INSERT INTO view_events (event_id, reservation_id, envelope) VALUES {}",
            db::rows(fresh.len(), 3, 1)
        );
        fresh
            .iter()
            .fold(db::multi_row(sql, fresh.len()), |insert, event| {
                insert
                    .bind::<Text, _>(event.event_id.as_str())
                    .bind::<Text, _>(event.reservation_id.as_str())
                    .bind::<Binary, _>(event.encode_to_vec())
            })
            .execute(conn)?;
    }
    let mut changed = project_stored(conn, changes, &reservations)?;
    Ok(events
        .iter()
        .zip(new)
        .map(|(event, new)| new.then(|| changed.remove(&event.reservation_id)).flatten())
        .collect())
}

/// Recomputes the views of `reservations` from their stored events and
/// stores them; a view's update_time is the next watch position of its
/// customer and its company, and the change is marked for their watchers on
/// every replica. The caller holds the reservations' locks. The changes, by
/// reservation.
fn project_stored(
    conn: &mut DbConnection,
    changes: &Changes,
    reservations: &[&str],
) -> QueryResult<HashMap<String, ViewChange>> {
    if reservations.is_empty() {
        return Ok(HashMap::new());
    }
    let stored: Vec<(String, Vec<u8>)> = view_events::table
        .filter(view_events::reservation_id.eq_any(reservations))
        .select((view_events::reservation_id, view_events::envelope))
        .load(conn)?;
    let mut events: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for (reservation, bytes) in stored {
        let event = Event::decode(bytes.as_slice())
            .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
        events.entry(reservation).or_default().push(event);
    }
    let mut views = Vec::with_capacity(events.len());
    for events in events.values() {
        let Some(view) = projection::project(events) else {
            continue;
        };
        let sort_time = events
            .iter()
            .filter_map(|e| e.occurred_at.as_ref().and_then(time::from_timestamp))
            .min()
            .unwrap_or_else(time::now)
            .naive_utc();
        views.push((view, sort_time));
    }
    if views.is_empty() {
        return Ok(HashMap::new());
    }
    let keys: Vec<[String; 2]> = views.iter().map(|(view, _)| watch_keys(view)).collect();
    let positions = watch::next_positions(conn, &keys)?;
    let sql = format!(
        "INSERT INTO reservation_views \
         (reservation_id, customer_id, cleaner_id, sort_time, update_time, view) VALUES {} \
         ON CONFLICT (reservation_id) DO UPDATE SET customer_id = excluded.customer_id, \
         cleaner_id = excluded.cleaner_id, sort_time = excluded.sort_time, \
         update_time = excluded.update_time, view = excluded.view",
        db::rows(views.len(), 6, 1)
    );
    let mut store = db::multi_row(sql, views.len());
    for ((view, sort_time), &position) in views.iter_mut().zip(&positions) {
        view.update_time = Some(time::to_timestamp(time::from_db(position)));
        store = store
            .bind::<Text, _>(view.reservation_id.clone())
            .bind::<Text, _>(view.customer_id.clone())
            .bind::<Text, _>(view.cleaner_id.clone())
            .bind::<Timestamp, _>(*sort_time)
            .bind::<Timestamp, _>(position)
            .bind::<Binary, _>(view.encode_to_vec());
    }
    store.execute(conn)?;
    changes.mark_latest(
        conn,
        keys.iter()
            .zip(&positions)
            .flat_map(|(keys, &position)| keys.iter().map(move |key| (key.as_str(), position))),
    )?;
    Ok(views
        .into_iter()
        .zip(keys.into_iter().zip(positions))
        .map(|((view, _), (watch_keys, position))| {
            (
                view.reservation_id,
                ViewChange {
                    watch_keys,
                    position,
                },
            )
        })
        .collect())
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
    lock_reservations(conn, &[reservation_id])?;
    let missing = reservation_views::table
        .find(reservation_id)
        .count()
        .get_result::<i64>(conn)?
        == 0;
    if !missing {
        return Ok(Rebuilt::Present);
    }
    let change = project_stored(conn, changes, &[reservation_id])?.remove(reservation_id);
    Ok(change.map_or(Rebuilt::NoView, Rebuilt::Stored))
}

/// Serialises the recomputation of a reservation across replicas on
/// PostgreSQL (SQLite has a single writer already). The locks are taken in
/// the order of their keys (a volatile function is evaluated after the
/// sort): two transactions take them in the same order, so they cannot
/// deadlock.
fn lock_reservations(conn: &mut DbConnection, reservations: &[&str]) -> QueryResult<()> {
    if matches!(conn, DbConnection::Postgres(_)) && !reservations.is_empty() {
        let sql = format!(
            "SELECT pg_advisory_xact_lock(key) FROM \
             (SELECT DISTINCT hashtext(column1) AS key FROM (VALUES {}) AS ids) AS keys \
             ORDER BY key",
            db::rows(reservations.len(), 1, 1)
        );
        reservations
            .iter()
            .fold(db::multi_row(sql, reservations.len()), |lock, id| {
                lock.bind::<Text, _>(*id)
            })
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
