//! The payments table: schema, row type, and the queries the service needs.
//! Every function takes a connection so that callers choose the transaction.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use ssak3_common::{db::DbConnection, time};

use crate::domain::{Money, Payment, PaymentState};

/// Migrations, applied at start-up.
pub const POSTGRES_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/postgres");
pub const SQLITE_MIGRATIONS: diesel_migrations::EmbeddedMigrations =
    diesel_migrations::embed_migrations!("migrations/sqlite");

diesel::table! {
    payments (payment_id) {
        payment_id -> Text,
        reservation_id -> Text,
        customer_id -> Text,
        cleaner_id -> Text,
        address -> Text,
        scheduled_at -> Nullable<Timestamp>,
        amount_units -> BigInt,
        currency_code -> Text,
        state -> Text,
        decline_reason -> Nullable<Text>,
        create_time -> Timestamp,
        update_time -> Timestamp,
    }
}

/// A stored payment. Inserts write every column, so one type serves both ways.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = payments)]
pub struct PaymentRow {
    pub payment_id: String,
    pub reservation_id: String,
    pub customer_id: String,
    pub cleaner_id: String,
    pub address: String,
    pub scheduled_at: Option<NaiveDateTime>,
    pub amount_units: i64,
    pub currency_code: String,
    pub state: String,
    pub decline_reason: Option<String>,
    pub create_time: NaiveDateTime,
    pub update_time: NaiveDateTime,
}

/// The change when a payment moves to another state.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = payments)]
pub struct StateChange {
    pub state: String,
    pub decline_reason: Option<String>,
    pub update_time: NaiveDateTime,
}

impl StateChange {
    pub fn to(state: PaymentState, decline_reason: Option<String>) -> Self {
        Self {
            state: state.as_str().to_owned(),
            decline_reason,
            update_time: time::now().naive_utc(),
        }
    }
}

impl From<&Payment> for PaymentRow {
    fn from(p: &Payment) -> Self {
        Self {
            payment_id: p.payment_id.clone(),
            reservation_id: p.reservation_id.clone(),
            customer_id: p.customer_id.clone(),
            cleaner_id: p.cleaner_id.clone(),
            address: p.address.clone(),
            scheduled_at: p.scheduled_at.map(|at| at.naive_utc()),
            amount_units: p.amount.units,
            currency_code: p.amount.currency_code.clone(),
            state: p.state.as_str().to_owned(),
            decline_reason: p.decline_reason.clone(),
            create_time: p.create_time.naive_utc(),
            update_time: p.update_time.naive_utc(),
        }
    }
}

impl TryFrom<PaymentRow> for Payment {
    type Error = diesel::result::Error;

    fn try_from(row: PaymentRow) -> Result<Self, Self::Error> {
        let state = PaymentState::parse(&row.state).ok_or_else(|| {
            diesel::result::Error::DeserializationError(
                format!("unknown payment state {:?}", row.state).into(),
            )
        })?;
        Ok(Self {
            payment_id: row.payment_id,
            reservation_id: row.reservation_id,
            customer_id: row.customer_id,
            cleaner_id: row.cleaner_id,
            address: row.address,
            scheduled_at: row.scheduled_at.map(time::from_db),
            amount: Money {
                currency_code: row.currency_code,
                units: row.amount_units,
            },
            state,
            decline_reason: row.decline_reason,
            create_time: time::from_db(row.create_time),
            update_time: time::from_db(row.update_time),
        })
    }
}

/// Inserts a payment; fails with a unique violation when the reservation has one.
pub fn insert(conn: &mut DbConnection, payment: &Payment) -> QueryResult<()> {
    diesel::insert_into(payments::table)
        .values(PaymentRow::from(payment))
        .execute(conn)
        .map(drop)
}

pub fn find_by_reservation_id(
    conn: &mut DbConnection,
    reservation_id: &str,
) -> QueryResult<Option<Payment>> {
    payments::table
        .filter(payments::reservation_id.eq(reservation_id))
        .select(PaymentRow::as_select())
        .first(conn)
        .optional()?
        .map(Payment::try_from)
        .transpose()
}

pub fn find_by_payment_id(
    conn: &mut DbConnection,
    payment_id: &str,
) -> QueryResult<Option<Payment>> {
    payments::table
        .find(payment_id)
        .select(PaymentRow::as_select())
        .first(conn)
        .optional()?
        .map(Payment::try_from)
        .transpose()
}

/// Moves a payment from `from` to the change's state and returns it; None
/// when it was no longer in `from`.
pub fn transition(
    conn: &mut DbConnection,
    payment_id: &str,
    from: PaymentState,
    change: StateChange,
) -> QueryResult<Option<Payment>> {
    diesel::update(
        payments::table
            .find(payment_id)
            .filter(payments::state.eq(from.as_str())),
    )
    .set(change)
    // Every column in the row's order (`as_returning` does not build for both backends).
    .returning(payments::all_columns)
    .get_result::<PaymentRow>(conn)
    .optional()?
    .map(Payment::try_from)
    .transpose()
}
