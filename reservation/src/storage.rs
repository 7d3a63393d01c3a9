//! The reservations table: schema, row types, and the queries the service needs.
//! State changes are conditional on the state they leave, so two racing
//! writers cannot both move the same reservation.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use ssak3_common::{db::DbConnection, paging, time};

use crate::domain::{
    Address, CompanyId, IdempotencyKey, Money, Note, Reservation, ReservationId, ReservationState,
    ServiceType,
};

pub const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
pub const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");

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
    }
}

/// A stored reservation. Inserts write every column, so one type serves both ways.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = reservations)]
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
            customer_id: r.customer_id.clone(),
            request_id: r.request_id.as_str().to_owned(),
            cleaner_id: r.cleaner_id.as_str().to_owned(),
            address: r.address.as_str().to_owned(),
            scheduled_at: r.scheduled_at.naive_utc(),
            service_type: r.service_type.as_str().to_owned(),
            note: r.note.as_str().to_owned(),
            price_units: r.price.units,
            currency_code: r.price.currency_code.clone(),
            state: r.state.as_str().to_owned(),
            payment_id: r.payment_id.clone(),
            rejection_reason: r.rejection_reason.clone(),
            void_payment: false,
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
            customer_id: row.customer_id,
            request_id: IdempotencyKey::parse(&row.request_id)
                .map_err(|_| corrupt("request_id", &row.request_id))?,
            cleaner_id: CompanyId::parse(&row.cleaner_id)
                .map_err(|_| corrupt("cleaner_id", &row.cleaner_id))?,
            address: Address::parse(&row.address).map_err(|_| corrupt("address", &row.address))?,
            scheduled_at: time::from_db(row.scheduled_at),
            service_type: ServiceType::parse_stored(&row.service_type)
                .ok_or_else(|| corrupt("service_type", &row.service_type))?,
            note: Note::parse(&row.note).map_err(|_| corrupt("note", &row.note))?,
            price: Money {
                currency_code: row.currency_code,
                units: row.price_units,
            },
            state: ReservationState::parse_stored(&row.state)
                .ok_or_else(|| corrupt("state", &row.state))?,
            payment_id: row.payment_id,
            rejection_reason: row.rejection_reason,
            version: row.version,
            create_time: time::from_db(row.create_time),
            update_time: time::from_db(row.update_time),
        })
    }
}

fn load(row: Option<ReservationRow>) -> QueryResult<Option<Reservation>> {
    row.map(Reservation::try_from).transpose()
}

/// Inserts a new reservation; a unique violation means the customer used the request_id before.
pub fn insert(conn: &mut DbConnection, reservation: &Reservation) -> QueryResult<()> {
    diesel::insert_into(reservations::table)
        .values(ReservationRow::from(reservation))
        .execute(conn)
        .map(drop)
}

pub fn find_by_id(conn: &mut DbConnection, id: &str) -> QueryResult<Option<Reservation>> {
    load(
        reservations::table
            .find(id)
            .select(ReservationRow::as_select())
            .first(conn)
            .optional()?,
    )
}

pub fn find_by_idempotency_key(
    conn: &mut DbConnection,
    customer_id: &str,
    request_id: &str,
) -> QueryResult<Option<Reservation>> {
    load(
        reservations::table
            .filter(reservations::customer_id.eq(customer_id))
            .filter(reservations::request_id.eq(request_id))
            .select(ReservationRow::as_select())
            .first(conn)
            .optional()?,
    )
}

/// PENDING_PAYMENT → CONFIRMED with the payment's id, in one statement;
/// the confirmed reservation, or None if it was no longer pending.
pub fn confirm(
    conn: &mut DbConnection,
    id: &str,
    payment_id: &str,
) -> QueryResult<Option<Reservation>> {
    let now = time::now().naive_utc();
    load(
        diesel::update(pending(id))
            .set((
                reservations::state.eq(ReservationState::Confirmed.as_str()),
                reservations::payment_id.eq(payment_id),
                reservations::version.eq(reservations::version + 1),
                reservations::update_time.eq(now),
            ))
            // Every column in the row's order (`as_returning` does not build for both backends).
            .returning(reservations::all_columns)
            .get_result::<ReservationRow>(conn)
            .optional()?,
    )
}

/// PENDING_PAYMENT → REJECTED; `void_payment` asks the reconciler to cancel a
/// payment that may have gone through. False if no longer pending.
pub fn reject(
    conn: &mut DbConnection,
    id: &str,
    reason: &str,
    void_payment: bool,
) -> QueryResult<bool> {
    let now = time::now().naive_utc();
    let updated = diesel::update(pending(id))
        .set((
            reservations::state.eq(ReservationState::Rejected.as_str()),
            reservations::rejection_reason.eq(reason),
            reservations::void_payment.eq(void_payment),
            reservations::version.eq(reservations::version + 1),
            reservations::update_time.eq(now),
        ))
        .execute(conn)?;
    Ok(updated == 1)
}

fn pending(
    id: &str,
) -> diesel::dsl::Filter<
    diesel::dsl::Find<reservations::table, &str>,
    diesel::dsl::Eq<reservations::state, &'static str>,
> {
    reservations::table
        .find(id)
        .filter(reservations::state.eq(ReservationState::PendingPayment.as_str()))
}

/// Ids of reservations pending since before `cutoff`, oldest first.
pub fn find_stale_pending(
    conn: &mut DbConnection,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<String>> {
    reservations::table
        .filter(reservations::state.eq(ReservationState::PendingPayment.as_str()))
        .filter(reservations::update_time.lt(cutoff.naive_utc()))
        .order(reservations::update_time.asc())
        .select(reservations::reservation_id)
        .limit(limit)
        .load(conn)
}

/// Ids of reservations whose payment still has to be cancelled.
pub fn find_payments_to_void(conn: &mut DbConnection, limit: i64) -> QueryResult<Vec<String>> {
    reservations::table
        .filter(reservations::void_payment.eq(true))
        .select(reservations::reservation_id)
        .limit(limit)
        .load(conn)
}

/// Records that the payment of `id` has been cancelled.
pub fn payment_voided(conn: &mut DbConnection, id: &str) -> QueryResult<()> {
    diesel::update(reservations::table.find(id))
        .set(reservations::void_payment.eq(false))
        .execute(conn)
        .map(drop)
}

/// Moves a reservation from `from` to `to`; false when it was no longer in `from`.
pub fn transition(
    conn: &mut DbConnection,
    id: &str,
    from: ReservationState,
    to: ReservationState,
) -> QueryResult<bool> {
    let updated = diesel::update(
        reservations::table
            .find(id)
            .filter(reservations::state.eq(from.as_str())),
    )
    .set((
        reservations::state.eq(to.as_str()),
        reservations::version.eq(reservations::version + 1),
        reservations::update_time.eq(time::now().naive_utc()),
    ))
    .execute(conn)?;
    Ok(updated == 1)
}

/// A company's jobs by scheduled time (then id), after `after`.
pub fn list_jobs(
    conn: &mut DbConnection,
    cleaner_id: &str,
    after: Option<&paging::Cursor>,
    limit: i64,
) -> QueryResult<Vec<Reservation>> {
    let mut query = reservations::table
        .filter(reservations::cleaner_id.eq(cleaner_id))
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
