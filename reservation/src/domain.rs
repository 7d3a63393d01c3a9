//! Reservations, the values they are made of, and their state machine.
//! Every value here was checked on the way in (`parse`), so past the gRPC
//! layer no invalid booking exists. No gRPC, database or broker types here.

use chrono::{DateTime, Duration, Utc};
use ssak3_common::config::PriceList;

/// A validation failure: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

/// Parses a required identifier: 1–`max` characters of `[A-Za-z0-9._:-]`.
fn identifier(field: &'static str, value: &str, max: usize) -> Result<String, Invalid> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(invalid(field, format!("is longer than {max} characters")));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(invalid(
            field,
            "may contain only letters, digits and . _ : -",
        ));
    }
    Ok(value.to_owned())
}

/// Free text of at most `max` characters with no control characters (newlines allowed if `multiline`).
fn text(field: &'static str, value: &str, max: usize, multiline: bool) -> Result<String, Invalid> {
    if value.chars().count() > max {
        return Err(invalid(field, format!("is longer than {max} characters")));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(value.to_owned())
}

/// The client's idempotency key for CreateReservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        identifier("request_id", value, 128).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A cleaning company's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompanyId(String);

impl CompanyId {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        identifier("cleaner_id", value, 64).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reservation's id (a UUID we issued, but callers may send anything).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationId(String);

impl ReservationId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        identifier("reservation_id", value, 64).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ReservationId {
    fn default() -> Self {
        Self::new()
    }
}

/// Where to clean: non-empty, at most 300 characters, one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address(String);

impl Address {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let value = value.trim();
        if value.is_empty() {
            return Err(invalid("address", "is required"));
        }
        text("address", value, 300, false).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A note for the cleaner: at most 1000 characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        text("note", value.trim(), 1000, true).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How far ahead a cleaning may be booked.
pub const MAX_BOOKING_HORIZON_DAYS: i64 = 366;

/// When the cleaning happens: in the future, within [`MAX_BOOKING_HORIZON_DAYS`],
/// kept to the microsecond (what both databases store), so that a retry of a
/// booking compares equal to the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduledAt(DateTime<Utc>);

impl ScheduledAt {
    pub fn parse(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<Self, Invalid> {
        let at = at.ok_or_else(|| invalid("scheduled_at", "is required"))?;
        let at = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
        if at <= now {
            return Err(invalid("scheduled_at", "must be in the future"));
        }
        if at > now + Duration::days(MAX_BOOKING_HORIZON_DAYS) {
            return Err(invalid(
                "scheduled_at",
                format!("must be within {MAX_BOOKING_HORIZON_DAYS} days"),
            ));
        }
        Ok(Self(at))
    }
    pub fn get(self) -> DateTime<Utc> {
        self.0
    }
}

/// The kinds of cleaning on offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    Standard,
    Deep,
    MoveOut,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "STANDARD",
            Self::Deep => "DEEP",
            Self::MoveOut => "MOVE_OUT",
        }
    }
    pub fn parse_stored(name: &str) -> Option<Self> {
        [Self::Standard, Self::Deep, Self::MoveOut]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
    /// The configured price, in KRW.
    pub fn price(self, prices: &PriceList) -> Money {
        let units = match self {
            Self::Standard => prices.standard,
            Self::Deep => prices.deep,
            Self::MoveOut => prices.move_out,
        };
        Money::krw(units)
    }
}

/// An amount in integer minor units of an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Money {
    pub currency_code: String,
    pub units: i64,
}

impl Money {
    pub fn krw(units: i64) -> Self {
        Self {
            currency_code: "KRW".into(),
            units,
        }
    }
}

/// A validated booking request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booking {
    pub request_id: IdempotencyKey,
    pub cleaner_id: CompanyId,
    pub address: Address,
    pub scheduled_at: ScheduledAt,
    pub service_type: ServiceType,
    pub note: Note,
}

/// Where a reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationState {
    /// Stored, payment asked for; not established.
    PendingPayment,
    Confirmed,
    Cleaned,
    Cancelled,
    /// Payment declined, or its outcome never became known in time.
    Rejected,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "PENDING_PAYMENT",
            Self::Confirmed => "CONFIRMED",
            Self::Cleaned => "CLEANED",
            Self::Cancelled => "CANCELLED",
            Self::Rejected => "REJECTED",
        }
    }
    pub fn parse_stored(name: &str) -> Option<Self> {
        [
            Self::PendingPayment,
            Self::Confirmed,
            Self::Cleaned,
            Self::Cancelled,
            Self::Rejected,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// A reservation as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: ReservationId,
    pub customer_id: String,
    pub request_id: IdempotencyKey,
    pub cleaner_id: CompanyId,
    pub address: Address,
    pub scheduled_at: DateTime<Utc>,
    pub service_type: ServiceType,
    pub note: Note,
    pub price: Money,
    pub state: ReservationState,
    pub payment_id: Option<String>,
    pub rejection_reason: Option<String>,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Reservation {
    /// A new booking awaiting payment, priced from the price list.
    pub fn book(
        customer_id: &str,
        booking: Booking,
        prices: &PriceList,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            reservation_id: ReservationId::new(),
            customer_id: customer_id.to_owned(),
            price: booking.service_type.price(prices),
            request_id: booking.request_id,
            cleaner_id: booking.cleaner_id,
            address: booking.address,
            scheduled_at: booking.scheduled_at.get(),
            service_type: booking.service_type,
            note: booking.note,
            state: ReservationState::PendingPayment,
            payment_id: None,
            rejection_reason: None,
            version: 1,
            create_time: now,
            update_time: now,
        }
    }

    /// True when `booking` asks for exactly what this reservation was booked with,
    /// so that a retry under the same request_id may return it.
    pub fn matches(&self, booking: &Booking) -> bool {
        self.cleaner_id == booking.cleaner_id
            && self.address == booking.address
            && self.scheduled_at == booking.scheduled_at.get()
            && self.service_type == booking.service_type
            && self.note == booking.note
    }

    /// True when the reservation is established (paid for).
    pub fn is_established(&self) -> bool {
        matches!(
            self.state,
            ReservationState::Confirmed | ReservationState::Cleaned | ReservationState::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking(now: DateTime<Utc>) -> Booking {
        Booking {
            request_id: IdempotencyKey("k".into()),
            cleaner_id: CompanyId("acme".into()),
            address: Address("1 Main St".into()),
            scheduled_at: ScheduledAt(now + Duration::days(1)),
            service_type: ServiceType::Deep,
            note: Note::default(),
        }
    }

    #[test]
    fn identifiers_reject_empty_long_and_odd_characters() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"a".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("0b6c5a2e-7f1d-4c8e-9a43-1f0e2d3c4b5a").is_ok());
        assert_eq!(CompanyId::parse("").map_err(|e| e.field), Err("cleaner_id"));
    }

    #[test]
    fn addresses_are_trimmed_bounded_and_single_line() {
        assert_eq!(
            Address::parse("  1 Main St ").map(|a| a.0),
            Ok("1 Main St".into())
        );
        assert!(Address::parse("   ").is_err());
        assert!(Address::parse(&"x".repeat(301)).is_err());
        assert!(Address::parse("line\nbreak").is_err());
        assert!(Note::parse("line\nbreak").is_ok());
        assert!(Note::parse(&"x".repeat(1001)).is_err());
    }

    #[test]
    fn schedule_must_be_future_and_within_the_horizon() {
        let now = Utc::now();
        assert!(ScheduledAt::parse(None, now).is_err());
        assert!(ScheduledAt::parse(Some(now), now).is_err());
        assert!(ScheduledAt::parse(Some(now - Duration::minutes(1)), now).is_err());
        assert!(ScheduledAt::parse(Some(now + Duration::days(400)), now).is_err());
        assert!(ScheduledAt::parse(Some(now + Duration::hours(2)), now).is_ok());
        let nanos = DateTime::from_timestamp(now.timestamp() + 3600, 123_456_789).unwrap_or(now);
        let kept = ScheduledAt::parse(Some(nanos), now).map(|at| at.get().timestamp_subsec_nanos());
        assert_eq!(kept, Ok(123_456_000));
    }

    #[test]
    fn booking_is_priced_from_the_list_and_starts_unpaid() {
        let now = Utc::now();
        let r = Reservation::book("alice", booking(now), &PriceList::default(), now);
        assert_eq!(r.price, Money::krw(PriceList::default().deep));
        assert_eq!(r.state, ReservationState::PendingPayment);
        assert!(!r.is_established());
    }

    #[test]
    fn a_retry_matches_only_the_same_booking() {
        let now = Utc::now();
        let original = booking(now);
        let r = Reservation::book("alice", original.clone(), &PriceList::default(), now);
        assert!(r.matches(&original));
        let mut elsewhere = original;
        elsewhere.address = Address("2 Other St".into());
        assert!(!r.matches(&elsewhere));
    }

    #[test]
    fn stored_names_round_trip() {
        for t in [
            ServiceType::Standard,
            ServiceType::Deep,
            ServiceType::MoveOut,
        ] {
            assert_eq!(ServiceType::parse_stored(t.as_str()), Some(t));
        }
        for s in [
            ReservationState::PendingPayment,
            ReservationState::Confirmed,
            ReservationState::Cleaned,
            ReservationState::Cancelled,
            ReservationState::Rejected,
        ] {
            assert_eq!(ReservationState::parse_stored(s.as_str()), Some(s));
        }
    }
}
