//! The payments table: schema, row type, and the queries the service needs.
//! A decided [`Transition`] is stored with a compare-and-set on `version`;
//! its event goes to the outbox in the same transaction.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use ssak3_common::{
    aggregate,
    db::{self, DbConnection, Schema},
    events::{inbox, outbox},
    ids::{CompanyId, CustomerId, PaymentId, ReservationId},
    money::Money,
    time,
};
use ssak3_proto::events::v1::Event;

use crate::{
    domain::{Order, Payment, PaymentEvent, PaymentState, Transition},
    events,
};

/// The payment service's tables: payments, its outbox and its inbox.
pub const SCHEMA: Schema = Schema {
    postgres: &[
        outbox::POSTGRES_MIGRATIONS,
        inbox::POSTGRES_MIGRATIONS,
        diesel_migrations::embed_migrations!("migrations/postgres"),
    ],
    sqlite: &[
        outbox::SQLITE_MIGRATIONS,
        inbox::SQLITE_MIGRATIONS,
        diesel_migrations::embed_migrations!("migrations/sqlite"),
    ],
};

diesel::table! {
    payments (payment_id) {
        payment_id -> Text,
        reservation_id -> Text,
        customer_id -> Nullable<Text>,
        cleaner_id -> Nullable<Text>,
        address -> Nullable<Text>,
        scheduled_at -> Nullable<Timestamp>,
        amount_units -> Nullable<BigInt>,
        currency_code -> Nullable<Text>,
        state -> Text,
        decline_reason -> Nullable<Text>,
        version -> BigInt,
        create_time -> Timestamp,
        update_time -> Timestamp,
    }
}

/// A stored payment. Inserts write every column, so one type serves both ways.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = payments, treat_none_as_default_value = false)]
pub struct PaymentRow {
    pub payment_id: String,
    pub reservation_id: String,
    pub customer_id: Option<String>,
    pub cleaner_id: Option<String>,
    pub address: Option<String>,
    pub scheduled_at: Option<NaiveDateTime>,
    pub amount_units: Option<i64>,
    pub currency_code: Option<String>,
    pub state: String,
    pub decline_reason: Option<String>,
    pub version: i64,
    pub create_time: NaiveDateTime,
    pub update_time: NaiveDateTime,
}

impl From<&Payment> for PaymentRow {
    fn from(p: &Payment) -> Self {
        let order = p.order.as_ref();
        Self {
            payment_id: p.payment_id.as_str().to_owned(),
            reservation_id: p.reservation_id.as_str().to_owned(),
            customer_id: order.map(|o| o.customer_id.as_str().to_owned()),
            cleaner_id: order.map(|o| o.company_id.as_str().to_owned()),
            address: order.map(|o| o.address.clone()),
            scheduled_at: order.map(|o| o.scheduled_at.naive_utc()),
            amount_units: order.map(|o| o.amount.units()),
            currency_code: order.map(|o| o.amount.currency_code().to_owned()),
            state: p.state.as_str().to_owned(),
            decline_reason: p.decline_reason.clone(),
            version: p.version,
            create_time: p.create_time.naive_utc(),
            update_time: p.update_time.naive_utc(),
        }
    }
}

fn corrupt(what: &str) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(
        format!("stored payment has an invalid {what}").into(),
    )
}

impl TryFrom<PaymentRow> for Payment {
    type Error = diesel::result::Error;

    fn try_from(row: PaymentRow) -> Result<Self, Self::Error> {
        // Stored values passed validation on the way in; failing here means corruption.
        let state = PaymentState::parse(&row.state).ok_or_else(|| corrupt("state"))?;
        let order = match (
            row.customer_id,
            row.cleaner_id,
            row.address,
            row.scheduled_at,
            row.amount_units,
            row.currency_code,
        ) {
            (None, None, None, _, None, None) => None,
            (
                Some(customer_id),
                Some(company_id),
                Some(address),
                Some(scheduled_at),
                Some(units),
                Some(currency_code),
            ) => Some(Order {
                customer_id: CustomerId::parse(&customer_id).map_err(|_| corrupt("customer_id"))?,
                company_id: CompanyId::parse(&company_id).map_err(|_| corrupt("cleaner_id"))?,
                address,
                scheduled_at: time::from_db(scheduled_at),
                amount: Money::stored(currency_code, units),
            }),
            _ => return Err(corrupt("order")),
        };
        Ok(Self {
            payment_id: PaymentId::parse(&row.payment_id).map_err(|_| corrupt("payment_id"))?,
            reservation_id: ReservationId::parse(&row.reservation_id)
                .map_err(|_| corrupt("reservation_id"))?,
            order,
            state,
            decline_reason: row.decline_reason,
            version: row.version,
            create_time: time::from_db(row.create_time),
            update_time: time::from_db(row.update_time),
        })
    }
}

/// Inserts payments in one statement, skipping each whose reservation has
/// one already (or earlier in `new`): for each, whether it was inserted.
/// Rows go in the order of their reservations: two replicas' batches
/// holding the same ones wait for each other instead of deadlocking.
pub fn insert_all(conn: &mut DbConnection, new: &[Payment]) -> QueryResult<Vec<bool>> {
    use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
    let mut rows: Vec<PaymentRow> = new.iter().map(PaymentRow::from).collect();
    rows.sort_unstable_by(|a, b| a.reservation_id.cmp(&b.reservation_id));
    let sql = format!(
        "INSERT INTO payments (payment_id, reservation_id, customer_id, cleaner_id, address, \
         scheduled_at, amount_units, currency_code, state, decline_reason, version, \
         create_time, update_time) VALUES {} ON CONFLICT DO NOTHING RETURNING payment_id AS id",
        db::rows(new.len(), 13, 1)
    );
    let insert = rows
        .into_iter()
        .fold(db::multi_row(sql, new.len()), |insert, row| {
            insert
                .bind::<Text, _>(row.payment_id)
                .bind::<Text, _>(row.reservation_id)
                .bind::<Nullable<Text>, _>(row.customer_id)
                .bind::<Nullable<Text>, _>(row.cleaner_id)
                .bind::<Nullable<Text>, _>(row.address)
                .bind::<Nullable<Timestamp>, _>(row.scheduled_at)
                .bind::<Nullable<BigInt>, _>(row.amount_units)
                .bind::<Nullable<Text>, _>(row.currency_code)
                .bind::<Text, _>(row.state)
                .bind::<Nullable<Text>, _>(row.decline_reason)
                .bind::<BigInt, _>(row.version)
                .bind::<Timestamp, _>(row.create_time)
                .bind::<Timestamp, _>(row.update_time)
        });
    db::returned(conn, insert, new.iter().map(|p| p.payment_id.as_str()))
}

pub fn find_by_reservation_id(
    conn: &mut DbConnection,
    reservation_id: &ReservationId,
) -> QueryResult<Option<Payment>> {
    payments::table
        .filter(payments::reservation_id.eq(reservation_id.as_str()))
        .select(PaymentRow::as_select())
        .first(conn)
        .optional()?
        .map(Payment::try_from)
        .transpose()
}

pub fn find_by_payment_id(
    conn: &mut DbConnection,
    payment_id: &PaymentId,
) -> QueryResult<Option<Payment>> {
    payments::table
        .find(payment_id.as_str())
        .select(PaymentRow::as_select())
        .first(conn)
        .optional()?
        .map(Payment::try_from)
        .transpose()
}

/// Stores each of `moves` whose payment still has the version it was
/// decided on, in one statement (a payment appears at most once): for
/// each, whether it was stored (false when another writer moved it first).
pub fn update_all(conn: &mut DbConnection, moves: &[&Transition]) -> QueryResult<Vec<bool>> {
    use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
    // A VALUES list names its columns column1, column2, … on both backends:
    // the id, the version expected, then the columns moved.
    let sql = format!(
        "UPDATE payments SET state = moved.column3, decline_reason = moved.column4, \
         version = moved.column5, update_time = moved.column6 \
         FROM (VALUES {}) AS moved \
         WHERE payments.payment_id = moved.column1 AND payments.version = moved.column2 \
         RETURNING payments.payment_id AS id",
        db::rows(moves.len(), 6, 1)
    );
    let update = moves
        .iter()
        .fold(db::multi_row(sql, moves.len()), |update, moved| {
            let next = &moved.next;
            update
                .bind::<Text, _>(next.payment_id.as_str())
                .bind::<BigInt, _>(moved.expected_version)
                .bind::<Text, _>(next.state.as_str())
                .bind::<Nullable<Text>, _>(next.decline_reason.as_deref())
                .bind::<BigInt, _>(next.version)
                .bind::<Timestamp, _>(next.update_time.naive_utc())
        });
    let ids: Vec<&str> = moves.iter().map(|m| m.next.payment_id.as_str()).collect();
    aggregate::compare_and_set(conn, ("payments", "payment_id"), &ids, update)
}

impl aggregate::Stored for Payment {
    type Event = PaymentEvent;

    fn envelope(transition: &Transition) -> Option<Event> {
        events::envelope(transition)
    }

    fn id(&self) -> &str {
        self.payment_id.as_str()
    }

    fn update_all(conn: &mut DbConnection, moves: &[&Transition]) -> QueryResult<Vec<bool>> {
        update_all(conn, moves)
    }
}
