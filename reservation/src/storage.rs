//! The reservations table: schema, row types, and the queries the service needs.
//! A decided [`Transition`] is stored with a compare-and-set on `version`,
//! so two racing writers cannot both move the same reservation; its event
//! goes to the outbox in the same transaction.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use ssak3_common::{
    aggregate,
    db::{self, Database, DbConnection, Schema, StorageError},
    events::outbox,
    money::Money,
    paging, time,
};
use ssak3_proto::events::v1::Event;

use crate::{
    domain::{
        Address, CompanyId, CustomerId, Decision, Note, PaymentId, RequestId, Reservation,
        ReservationError, ReservationEvent, ReservationId, ReservationState, ServiceType,
        Transition,
    },
    events,
};

/// The reservations of one service's database, read and moved as aggregates.
#[derive(Clone, Debug)]
pub struct Repository {
    db: Database,
    inserts: db::Batches<Reservation, bool>,
    moves: aggregate::Moves<Reservation>,
}

/// Why a command left a reservation as it was.
pub type DecideError = aggregate::DecideError<ReservationError>;

impl Repository {
    /// `events` is woken when a move recorded an event.
    pub fn new(db: Database, events: outbox::Waker) -> Self {
        Self {
            inserts: db::Batches::new(db.clone(), insert_all),
            moves: aggregate::Moves::new(db.clone(), events),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn find(&self, id: &ReservationId) -> Result<Option<Reservation>, StorageError> {
        let id = id.clone();
        self.db.read(move |c| find_by_id(c, &id)).await
    }

    /// The booking a customer stored under `request_id`, if any.
    pub async fn find_by_request(
        &self,
        customer: &CustomerId,
        request_id: &RequestId,
    ) -> Result<Option<Reservation>, StorageError> {
        let (customer, request_id) = (customer.clone(), request_id.clone());
        self.db
            .read(move |c| find_by_idempotency_key(c, &customer, &request_id))
            .await
    }

    /// Stores a new booking, or returns the one stored under the same request_id.
    pub async fn insert_or_find(
        &self,
        reservation: Reservation,
    ) -> Result<Reservation, StorageError> {
        let customer = reservation.customer_id.clone();
        let key = reservation.request_id.clone();
        self.inserts
            .insert_or_find(reservation, move |c| {
                find_by_idempotency_key(c, &customer, &key)
            })
            .await
    }

    /// Asks the aggregate to decide `command` on `current` and stores the
    /// move (see [`aggregate::decide`]); returns the reservation as stored.
    pub async fn decide<C>(
        &self,
        current: Reservation,
        command: C,
    ) -> Result<Reservation, DecideError>
    where
        C: Fn(&Reservation, DateTime<Utc>) -> Result<Decision, ReservationError>,
    {
        let id = current.reservation_id.clone();
        aggregate::decide(&self.moves, current, command, || self.find(&id)).await
    }
}

impl aggregate::Stored for Reservation {
    type Event = ReservationEvent;

    fn envelope(transition: &Transition) -> Option<Event> {
        events::envelope(transition)
    }

    fn id(&self) -> &str {
        self.reservation_id.as_str()
    }

    fn update_all(conn: &mut DbConnection, moves: &[&Transition]) -> QueryResult<Vec<bool>> {
        update_all(conn, moves)
    }
}

/// The reservation service's tables: reservations and its outbox.
pub const SCHEMA: Schema = Schema {
    postgres: &[
        outbox::POSTGRES_MIGRATIONS,
        diesel_migrations::embed_migrations!("migrations/postgres"),
    ],
    sqlite: &[
        outbox::SQLITE_MIGRATIONS,
        diesel_migrations::embed_migrations!("migrations/sqlite"),
    ],
};

diesel::table! {
    reservations (reservation_id) {
        reservation_id -> Text,
        customer_id -> Text,
        request_id -> Text,
        cleaner_id -> Text,
        address -> Text,
        scheduled_at -> Timestamp,
        service_type -> Text,
        note -> Text,
        price_units -> BigInt,
        currency_code -> Text,
        state -> Text,
        payment_id -> Nullable<Text>,
        rejection_reason -> Nullable<Text>,
        void_payment -> Bool,
        version -> BigInt,
        create_time -> Timestamp,
        update_time -> Timestamp,
        claimed_until -> Nullable<Timestamp>,
    }
}

/// A stored reservation. Inserts write every column but the reconciler's
/// claim, so one type serves both ways.
#[derive(Clone, Debug, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = reservations, treat_none_as_default_value = false)]
pub struct ReservationRow {
    pub reservation_id: String,
    pub customer_id: String,
    pub request_id: String,
    pub cleaner_id: String,
    pub address: String,
    pub scheduled_at: NaiveDateTime,
    pub service_type: String,
    pub note: String,
    pub price_units: i64,
    pub currency_code: String,
    pub state: String,
    pub payment_id: Option<String>,
    pub rejection_reason: Option<String>,
    pub void_payment: bool,
    pub version: i64,
    pub create_time: NaiveDateTime,
    pub update_time: NaiveDateTime,
}

impl From<&Reservation> for ReservationRow {
    fn from(r: &Reservation) -> Self {
        Self {
            reservation_id: r.reservation_id.as_str().to_owned(),
            customer_id: r.customer_id.as_str().to_owned(),
            request_id: r.request_id.as_str().to_owned(),
            cleaner_id: r.company_id.as_str().to_owned(),
            address: r.address.as_str().to_owned(),
            scheduled_at: r.scheduled_at.naive_utc(),
            service_type: r.service_type.as_str().to_owned(),
            note: r.note.as_str().to_owned(),
            price_units: r.price.units(),
            currency_code: r.price.currency_code().to_owned(),
            state: r.state.as_str().to_owned(),
            payment_id: r.payment_id.as_ref().map(|id| id.as_str().to_owned()),
            rejection_reason: r.rejection_reason.clone(),
            void_payment: r.void_payment,
            version: r.version,
            create_time: r.create_time.naive_utc(),
            update_time: r.update_time.naive_utc(),
        }
    }
}

fn corrupt(what: &str, value: &str) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(
        format!("stored {what} {value:?} is invalid").into(),
    )
}

impl TryFrom<ReservationRow> for Reservation {
    type Error = diesel::result::Error;

    fn try_from(row: ReservationRow) -> Result<Self, Self::Error> {
        // Stored values passed validation on the way in; failing here means corruption.
        Ok(Self {
            reservation_id: ReservationId::parse(&row.reservation_id)
                .map_err(|_| corrupt("reservation_id", &row.reservation_id))?,
            customer_id: CustomerId::parse(&row.customer_id)
                .map_err(|_| corrupt("customer_id", &row.customer_id))?,
            request_id: RequestId::parse(&row.request_id)
                .map_err(|_| corrupt("request_id", &row.request_id))?,
            company_id: CompanyId::parse(&row.cleaner_id)
                .map_err(|_| corrupt("cleaner_id", &row.cleaner_id))?,
            address: Address::parse(&row.address).map_err(|_| corrupt("address", &row.address))?,
            scheduled_at: time::from_db(row.scheduled_at),
            service_type: ServiceType::parse_stored(&row.service_type)
                .ok_or_else(|| corrupt("service_type", &row.service_type))?,
            note: Note::parse(&row.note).map_err(|_| corrupt("note", &row.note))?,
            price: Money::stored(row.currency_code, row.price_units),
            state: ReservationState::parse_stored(&row.state)
                .ok_or_else(|| corrupt("state", &row.state))?,
            payment_id: row
                .payment_id
                .map(|id| PaymentId::parse(&id).map_err(|_| corrupt("payment_id", &id)))
                .transpose()?,
            rejection_reason: row.rejection_reason,
            void_payment: row.void_payment,
            version: row.version,
            create_time: time::from_db(row.create_time),
            update_time: time::from_db(row.update_time),
        })
    }
}

fn load(row: Option<ReservationRow>) -> QueryResult<Option<Reservation>> {
    row.map(Reservation::try_from).transpose()
}

/// Inserts new reservations in one statement, skipping each whose
/// customer used its request_id before (or earlier in `new`): for each,
/// whether it was inserted. Rows go in the order of their idempotency
/// keys: two replicas' batches holding the same keys wait for each other
/// instead of deadlocking.
pub fn insert_all(conn: &mut DbConnection, new: &[Reservation]) -> QueryResult<Vec<bool>> {
    use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
    let mut rows: Vec<ReservationRow> = new.iter().map(ReservationRow::from).collect();
    rows.sort_unstable_by(|a, b| {
        (&a.customer_id, &a.request_id).cmp(&(&b.customer_id, &b.request_id))
    });
    let sql = format!(
        "INSERT INTO reservations (reservation_id, customer_id, request_id, cleaner_id, \
         address, scheduled_at, service_type, note, price_units, currency_code, state, \
         payment_id, rejection_reason, void_payment, version, create_time, update_time) \
         VALUES {} ON CONFLICT DO NOTHING RETURNING reservation_id AS id",
        db::rows(new.len(), 17, 1)
    );
    let insert = rows
        .into_iter()
        .fold(db::multi_row(sql, new.len()), |insert, row| {
            insert
                .bind::<Text, _>(row.reservation_id)
                .bind::<Text, _>(row.customer_id)
                .bind::<Text, _>(row.request_id)
                .bind::<Text, _>(row.cleaner_id)
                .bind::<Text, _>(row.address)
                .bind::<Timestamp, _>(row.scheduled_at)
                .bind::<Text, _>(row.service_type)
                .bind::<Text, _>(row.note)
                .bind::<BigInt, _>(row.price_units)
                .bind::<Text, _>(row.currency_code)
                .bind::<Text, _>(row.state)
                .bind::<Nullable<Text>, _>(row.payment_id)
                .bind::<Nullable<Text>, _>(row.rejection_reason)
                .bind::<Bool, _>(row.void_payment)
                .bind::<BigInt, _>(row.version)
                .bind::<Timestamp, _>(row.create_time)
                .bind::<Timestamp, _>(row.update_time)
        });
    db::returned(conn, insert, new.iter().map(|r| r.reservation_id.as_str()))
}

pub fn find_by_id(conn: &mut DbConnection, id: &ReservationId) -> QueryResult<Option<Reservation>> {
    load(
        reservations::table
            .find(id.as_str())
            .select(ReservationRow::as_select())
            .first(conn)
            .optional()?,
    )
}

pub fn find_by_idempotency_key(
    conn: &mut DbConnection,
    customer_id: &CustomerId,
    request_id: &RequestId,
) -> QueryResult<Option<Reservation>> {
    load(
        reservations::table
            .filter(reservations::customer_id.eq(customer_id.as_str()))
            .filter(reservations::request_id.eq(request_id.as_str()))
            .select(ReservationRow::as_select())
            .first(conn)
            .optional()?,
    )
}

/// Stores each of `moves` whose reservation still has the version it was
/// decided on, in one statement (a reservation appears at most once): for
/// each, whether it was stored (false when another writer moved the
/// reservation first).
pub fn update_all(conn: &mut DbConnection, moves: &[&Transition]) -> QueryResult<Vec<bool>> {
    use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};
    // A VALUES list names its columns column1, column2, … on both backends:
    // the id, the version expected, then the columns moved.
    let sql = format!(
        "UPDATE reservations SET state = moved.column3, payment_id = moved.column4, \
         rejection_reason = moved.column5, void_payment = moved.column6, \
         version = moved.column7, update_time = moved.column8 \
         FROM (VALUES {}) AS moved \
         WHERE reservations.reservation_id = moved.column1 \
         AND reservations.version = moved.column2 \
         RETURNING reservations.reservation_id AS id",
        db::rows(moves.len(), 8, 1)
    );
    let update = moves
        .iter()
        .fold(db::multi_row(sql, moves.len()), |update, moved| {
            let next = &moved.next;
            update
                .bind::<Text, _>(next.reservation_id.as_str())
                .bind::<BigInt, _>(moved.expected_version)
                .bind::<Text, _>(next.state.as_str())
                .bind::<Nullable<Text>, _>(next.payment_id.as_ref().map(PaymentId::as_str))
                .bind::<Nullable<Text>, _>(next.rejection_reason.as_deref())
                .bind::<Bool, _>(next.void_payment)
                .bind::<BigInt, _>(next.version)
                .bind::<Timestamp, _>(next.update_time.naive_utc())
        });
    let ids: Vec<&str> = moves
        .iter()
        .map(|m| m.next.reservation_id.as_str())
        .collect();
    aggregate::compare_and_set(conn, ("reservations", "reservation_id"), &ids, update)
}

/// Claims up to `limit` reservations the reconciler has to settle, until
/// `until`: those still PENDING_PAYMENT since before `cutoff`, and those
/// whose payment is to be voided. Rows another replica's reconciler holds a
/// live claim on are passed over (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
pub fn claim_unsettled(
    conn: &mut DbConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> QueryResult<Vec<Reservation>> {
    use diesel::sql_types::{BigInt, Timestamp};
    diesel::sql_query(claim_unsettled_sql(conn.skip_locked()))
        .bind::<Timestamp, _>(until.naive_utc())
        .bind::<Timestamp, _>(cutoff.naive_utc())
        .bind::<Timestamp, _>(now.naive_utc())
        .bind::<BigInt, _>(limit)
        .load::<ReservationRow>(conn)?
        .into_iter()
        .map(Reservation::try_from)
        .collect()
}

/// [`claim_unsettled`]'s statement. The condition of the index
/// `reservations_unsettled` is repeated as a term of its own, written out,
/// so that each database can see that the index holds every row it claims
/// (SQLite looks for the index's condition among the terms joined by AND).
fn claim_unsettled_sql(skip_locked: &str) -> String {
    format!(
        "UPDATE reservations SET claimed_until = $1 WHERE reservation_id IN (\
           SELECT reservation_id FROM reservations \
           WHERE (state = '{pending}' OR void_payment) \
             AND ((state = '{pending}' AND update_time < $2) OR void_payment) \
             AND (claimed_until IS NULL OR claimed_until < $3) \
           ORDER BY update_time LIMIT $4 {skip_locked}) \
         RETURNING *",
        pending = ReservationState::PendingPayment.as_str(),
    )
}

/// Gives up the reconciler's claim on a reservation it could not settle
/// yet, so that the next round (of any replica) tries again.
pub fn release_claim(conn: &mut DbConnection, id: &ReservationId) -> QueryResult<()> {
    diesel::update(reservations::table.find(id.as_str()))
        .set(reservations::claimed_until.eq(None::<chrono::NaiveDateTime>))
        .execute(conn)
        .map(drop)
}

/// A company's jobs by scheduled time (then id), after `after`.
pub fn list_jobs(
    conn: &mut DbConnection,
    company_id: &CompanyId,
    after: Option<&paging::Cursor>,
    limit: i64,
) -> QueryResult<Vec<Reservation>> {
    let mut query = reservations::table
        .filter(reservations::cleaner_id.eq(company_id.as_str().to_owned()))
        // Bookings not (or never) paid for are not jobs.
        .filter(
            reservations::state.eq_any(
                [
                    ReservationState::Confirmed,
                    ReservationState::Cleaned,
                    ReservationState::Cancelled,
                ]
                .map(ReservationState::as_str),
            ),
        )
        .into_boxed();
    if let Some(cursor) = after {
        query = query.filter(
            reservations::scheduled_at
                .gt(cursor.at)
                .or(reservations::scheduled_at
                    .eq(cursor.at)
                    .and(reservations::reservation_id.gt(cursor.id.clone()))),
        );
    }
    query
        .order((
            reservations::scheduled_at.asc(),
            reservations::reservation_id.asc(),
        ))
        .limit(limit)
        .select(ReservationRow::as_select())
        .load(conn)?
        .into_iter()
        .map(Reservation::try_from)
        .collect()
}

#[cfg(test)]
mod tests {
    use diesel::{RunQueryDsl as _, sql_types::Text};
    use ssak3_common::db::{Database, DatabaseUrl};

    use super::*;

    /// On SQLite too, the reconciler's claim reads the unsettled
    /// reservations through their index rather than scanning the table.
    #[tokio::test]
    async fn the_claim_uses_the_index_of_unsettled_reservations_on_sqlite() -> anyhow::Result<()> {
        #[derive(diesel::QueryableByName)]
        struct Step {
            #[diesel(sql_type = Text)]
            detail: String,
        }
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("r.db")), 1)?;
        db.migrate(SCHEMA).await?;
        let plan = db
            .read(|c| {
                diesel::sql_query(format!("EXPLAIN QUERY PLAN {}", claim_unsettled_sql("")))
                    .load::<Step>(c)
            })
            .await?;
        let plan: Vec<String> = plan.into_iter().map(|step| step.detail).collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING INDEX reservations_unsettled")),
            "{plan:?}"
        );
        Ok(())
    }
}
