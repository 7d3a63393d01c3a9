//! The notifications table: one row per notifying event, with its delivery state.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use ssak3_common::{db::DbConnection, paging, time};

pub const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
pub const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");

diesel::table! {
    notifications (notification_id) {
        notification_id -> Text,
        recipient_id -> Text,
        kind -> Text,
        reservation_id -> Text,
        message -> Text,
        event_id -> Text,
        create_time -> Timestamp,
        delivery_state -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        last_error -> Nullable<Text>,
    }
}

/// A stored notification.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = notifications)]
pub struct Notification {
    pub notification_id: String,
    pub recipient_id: String,
    /// `PAYMENT_APPROVED`, `PAYMENT_CANCELLED` or `CLEANING_COMPLETED`.
    pub kind: String,
    pub reservation_id: String,
    pub message: String,
    pub event_id: String,
    pub create_time: NaiveDateTime,
    pub delivery_state: String,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub last_error: Option<String>,
}

pub const PENDING: &str = "PENDING";
pub const DELIVERED: &str = "DELIVERED";
pub const FAILED: &str = "FAILED";

pub fn insert(conn: &mut DbConnection, notification: &Notification) -> QueryResult<()> {
    diesel::insert_into(notifications::table)
        .values(notification)
        .execute(conn)
        .map(drop)
}

/// A recipient's notifications, oldest first, after `after`.
pub fn list(
    conn: &mut DbConnection,
    recipient_id: &str,
    after: Option<&paging::Cursor>,
    limit: i64,
) -> QueryResult<Vec<Notification>> {
    let mut query = notifications::table
        .filter(notifications::recipient_id.eq(recipient_id))
        .into_boxed();
    if let Some(cursor) = after {
        query = query.filter(
            notifications::create_time
                .gt(cursor.at)
                .or(notifications::create_time
                    .eq(cursor.at)
                    .and(notifications::notification_id.gt(cursor.id.clone()))),
        );
    }
    query
        .order((
            notifications::create_time.asc(),
            notifications::notification_id.asc(),
        ))
        .limit(limit)
        .select(Notification::as_select())
        .load(conn)
}

/// Notifications whose next delivery attempt is due.
pub fn due(conn: &mut DbConnection, limit: i64) -> QueryResult<Vec<Notification>> {
    notifications::table
        .filter(notifications::delivery_state.eq(PENDING))
        .filter(notifications::next_attempt_at.le(time::now().naive_utc()))
        .order(notifications::next_attempt_at.asc())
        .limit(limit)
        .select(Notification::as_select())
        .load(conn)
}

/// Records a delivery attempt: delivered, to retry at `retry_at`, or failed for good.
pub fn record_attempt(
    conn: &mut DbConnection,
    id: &str,
    state: &str,
    retry_at: NaiveDateTime,
    error: Option<String>,
) -> QueryResult<()> {
    diesel::update(notifications::table.find(id))
        .set((
            notifications::delivery_state.eq(state),
            notifications::attempts.eq(notifications::attempts + 1),
            notifications::next_attempt_at.eq(retry_at),
            notifications::last_error.eq(error),
        ))
        .execute(conn)
        .map(drop)
}

/// Records the delivery of each of `ids` (one attempt each).
pub fn record_delivered(conn: &mut DbConnection, ids: &[String]) -> QueryResult<()> {
    diesel::update(notifications::table.filter(notifications::notification_id.eq_any(ids)))
        .set((
            notifications::delivery_state.eq(DELIVERED),
            notifications::attempts.eq(notifications::attempts + 1),
            notifications::next_attempt_at.eq(time::now().naive_utc()),
            notifications::last_error.eq(None::<String>),
        ))
        .execute(conn)
        .map(drop)
}

/// One notification by id.
pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<Notification>> {
    notifications::table
        .find(id)
        .select(Notification::as_select())
        .first(conn)
        .optional()
}
