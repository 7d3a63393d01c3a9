//! The notifications table: one row per notifying event, with its delivery
//! state. Delivery moves are stored with a compare-and-set on `attempts`.

use chrono::NaiveDateTime;
use diesel::{
    prelude::*,
    sql_types::{Integer, Nullable, Text, Timestamp},
};
use ssak3_common::{
    changes::Changes,
    db::{self, DbConnection, Schema},
    events::inbox,
    ids::ReservationId,
    paging, time, watch,
};

use crate::domain::{DeliveryState, Notification, NotificationKind, Recipient, Transition};

/// The notify service's tables: notifications and its inbox.
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
    notifications (notification_id) {
        notification_id -> Text,
        recipient_id -> Text,
        recipient_role -> Text,
        kind -> Text,
        reservation_id -> Text,
        message -> Text,
        event_id -> Text,
        create_time -> Timestamp,
        delivery_state -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        last_error -> Nullable<Text>,
        endpoint -> Nullable<Text>,
        claimed_until -> Nullable<Timestamp>,
    }
}

/// A stored notification, as the table holds it (but for the claim, which
/// only delivery reads and writes).
#[derive(Clone, Debug, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = notifications, treat_none_as_default_value = false)]
struct NotificationRow {
    notification_id: String,
    recipient_id: String,
    recipient_role: String,
    kind: String,
    reservation_id: String,
    message: String,
    event_id: String,
    create_time: NaiveDateTime,
    delivery_state: String,
    attempts: i32,
    next_attempt_at: NaiveDateTime,
    last_error: Option<String>,
    endpoint: Option<String>,
}

impl From<&Notification> for NotificationRow {
    fn from(n: &Notification) -> Self {
        Self {
            notification_id: n.notification_id.clone(),
            recipient_id: n.recipient.id().to_owned(),
            recipient_role: n.recipient.role().to_owned(),
            kind: n.kind.as_str().to_owned(),
            reservation_id: n.reservation_id.as_str().to_owned(),
            message: n.message.clone(),
            event_id: n.event_id.clone(),
            create_time: n.create_time.naive_utc(),
            delivery_state: n.delivery_state.as_str().to_owned(),
            attempts: n.attempts,
            next_attempt_at: n.next_attempt_at.naive_utc(),
            last_error: n.last_error.clone(),
            endpoint: n.endpoint.clone(),
        }
    }
}

fn corrupt(what: &str) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(
        format!("stored notification has an invalid {what}").into(),
    )
}

impl TryFrom<NotificationRow> for Notification {
    type Error = diesel::result::Error;

    fn try_from(row: NotificationRow) -> Result<Self, Self::Error> {
        Ok(Self {
            notification_id: row.notification_id,
            recipient: Recipient::stored(&row.recipient_role, &row.recipient_id)
                .ok_or_else(|| corrupt("recipient"))?,
            kind: NotificationKind::parse(&row.kind).ok_or_else(|| corrupt("kind"))?,
            reservation_id: ReservationId::parse(&row.reservation_id)
                .map_err(|_| corrupt("reservation_id"))?,
            message: row.message,
            event_id: row.event_id,
            create_time: time::from_db(row.create_time),
            endpoint: row.endpoint,
            delivery_state: DeliveryState::parse(&row.delivery_state)
                .ok_or_else(|| corrupt("delivery_state"))?,
            attempts: row.attempts,
            next_attempt_at: time::from_db(row.next_attempt_at),
            last_error: row.last_error,
        })
    }
}

fn load(rows: Vec<NotificationRow>) -> QueryResult<Vec<Notification>> {
    rows.into_iter().map(Notification::try_from).collect()
}

/// Stores `notifications`, in one go: each one's create_time is its
/// recipient's next watch position (so one recipient's notifications are
/// strictly ordered in the order they commit, and in the order given within
/// one transaction), and the recipients' watchers on every replica are
/// marked; returns them as stored. Once the transaction commits, the caller
/// tells [`Changes::committed`] (SQLite's watchers hear of them then).
pub fn insert_all(
    conn: &mut DbConnection,
    changes: &Changes,
    mut notifications: Vec<Notification>,
) -> QueryResult<Vec<Notification>> {
    if notifications.is_empty() {
        return Ok(notifications);
    }
    let keys: Vec<[String; 1]> = notifications
        .iter()
        .map(|n| [n.recipient.watch_key()])
        .collect();
    let positions = watch::next_positions(conn, &keys)?;
    let count = notifications.len();
    let sql = format!(
        "INSERT INTO notifications (notification_id, recipient_id, recipient_role, kind, \
         reservation_id, message, event_id, create_time, delivery_state, attempts, \
         next_attempt_at, last_error, endpoint) VALUES {}",
        db::rows(count, 13, 1)
    );
    let mut insert = db::multi_row(sql, count);
    for (notification, &position) in notifications.iter_mut().zip(&positions) {
        notification.create_time = time::from_db(position);
        let row = NotificationRow::from(&*notification);
        insert = insert
            .bind::<Text, _>(row.notification_id)
            .bind::<Text, _>(row.recipient_id)
            .bind::<Text, _>(row.recipient_role)
            .bind::<Text, _>(row.kind)
            .bind::<Text, _>(row.reservation_id)
            .bind::<Text, _>(row.message)
            .bind::<Text, _>(row.event_id)
            .bind::<Timestamp, _>(row.create_time)
            .bind::<Text, _>(row.delivery_state)
            .bind::<Integer, _>(row.attempts)
            .bind::<Timestamp, _>(row.next_attempt_at)
            .bind::<Nullable<Text>, _>(row.last_error)
            .bind::<Nullable<Text>, _>(row.endpoint);
    }
    insert.execute(conn)?;
    changes.mark_latest(
        conn,
        keys.iter()
            .zip(positions)
            .map(|([key], position)| (key.as_str(), position)),
    )?;
    Ok(notifications)
}

/// A recipient's notifications, newest first, after (older than) `after`.
pub fn list(
    conn: &mut DbConnection,
    recipient: &Recipient,
    after: Option<&paging::Cursor>,
    limit: i64,
) -> QueryResult<Vec<Notification>> {
    let mut query = notifications::table
        .filter(notifications::recipient_role.eq(recipient.role()))
        .filter(notifications::recipient_id.eq(recipient.id().to_owned()))
        .into_boxed();
    if let Some(cursor) = after {
        query = query.filter(
            notifications::create_time
                .lt(cursor.at)
                .or(notifications::create_time
                    .eq(cursor.at)
                    .and(notifications::notification_id.lt(cursor.id.clone()))),
        );
    }
    load(
        query
            .order((
                notifications::create_time.desc(),
                notifications::notification_id.desc(),
            ))
            .limit(limit)
            .select(NotificationRow::as_select())
            .load(conn)?,
    )
}

/// A recipient's notifications stored after `position`, oldest first: what a
/// watch replays.
pub fn stored_after(
    conn: &mut DbConnection,
    recipient: &Recipient,
    position: watch::Position,
    limit: i64,
) -> QueryResult<Vec<Notification>> {
    load(
        notifications::table
            .filter(notifications::recipient_role.eq(recipient.role()))
            .filter(notifications::recipient_id.eq(recipient.id().to_owned()))
            .filter(notifications::create_time.gt(position))
            .order(notifications::create_time.asc())
            .limit(limit)
            .select(NotificationRow::as_select())
            .load(conn)?,
    )
}

/// Claims up to `limit` notifications due for delivery to `endpoint`,
/// oldest due first, until `until`. Deliveries another replica holds a live
/// claim on are passed over (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
pub fn claim_due(
    conn: &mut DbConnection,
    endpoint: &str,
    limit: i64,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> QueryResult<Vec<Notification>> {
    use diesel::sql_types::{BigInt, Text, Timestamp};
    let rows: Vec<NotificationRow> = diesel::sql_query(format!(
        "UPDATE notifications SET claimed_until = $1 WHERE notification_id IN (\
           SELECT notification_id FROM notifications \
           WHERE endpoint = $2 AND delivery_state = $3 AND next_attempt_at <= $4 \
             AND (claimed_until IS NULL OR claimed_until < $5) \
           ORDER BY next_attempt_at LIMIT $6 {}) \
         RETURNING *",
        conn.skip_locked()
    ))
    .bind::<Timestamp, _>(until)
    .bind::<Text, _>(endpoint)
    .bind::<Text, _>(DeliveryState::Pending.as_str())
    .bind::<Timestamp, _>(now)
    .bind::<Timestamp, _>(now)
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    let mut due = load(rows)?;
    due.sort_by_key(|n| n.next_attempt_at);
    Ok(due)
}

/// Stores a delivery move, and gives up the claim, if the row is still
/// under `claim` (the `claimed_until` [`claim_due`] set) and no other
/// attempt was recorded meanwhile. A replica whose claim ran out and was
/// taken by another records nothing and leaves that claim alone, so a third
/// replica cannot take the row while the second is still delivering it.
pub fn apply(
    conn: &mut DbConnection,
    transition: &Transition,
    claim: NaiveDateTime,
) -> QueryResult<bool> {
    let next = &transition.notification;
    let updated = diesel::update(
        notifications::table
            .find(&next.notification_id)
            .filter(notifications::attempts.eq(transition.expected_attempts))
            .filter(notifications::claimed_until.eq(claim)),
    )
    .set((
        notifications::delivery_state.eq(next.delivery_state.as_str()),
        notifications::attempts.eq(next.attempts),
        notifications::next_attempt_at.eq(next.next_attempt_at.naive_utc()),
        notifications::last_error.eq(next.last_error.as_deref()),
        notifications::claimed_until.eq(None::<NaiveDateTime>),
    ))
    .execute(conn)?;
    Ok(updated == 1)
}

/// One notification by id.
pub fn find(conn: &mut DbConnection, id: &str) -> QueryResult<Option<Notification>> {
    notifications::table
        .find(id)
        .select(NotificationRow::as_select())
        .first(conn)
        .optional()?
        .map(Notification::try_from)
        .transpose()
}
