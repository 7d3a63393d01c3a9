//! Reservations, the values they are made of, and their state machine.
//! Every value here was checked on the way in (`parse`), so past the gRPC
//! layer no invalid booking exists. The aggregate decides every move of a
//! reservation: [`Reservation::confirm`], [`Reservation::reject`],
//! [`Reservation::cancel`] and [`Reservation::complete`] return the
//! [`Transition`] to store (with the event it announces) or say why not.
//! No gRPC, database or broker types here.

use chrono::{DateTime, Duration, Utc};
pub use ssak3_common::ids::{CompanyId, CustomerId, Invalid, PaymentId, RequestId, ReservationId};
use ssak3_common::{
    aggregate::{self, Outcome, Versioned},
    money::Money,
    text,
};

use crate::config::PriceList;

/// Where to clean: non-empty, at most 300 characters, one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address(String);

impl Address {
    pub const MAX_CHARS: usize = 300;

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let value = value.trim();
        if value.is_empty() {
            return Err(Invalid::new("address", "is required"));
        }
        text::one_line("address", value, Self::MAX_CHARS)?;
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A note for the cleaner: at most 1000 characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    pub const MAX_CHARS: usize = 1000;

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        let value = value.trim();
        text::multi_line("note", value, Self::MAX_CHARS)?;
        Ok(Self(value.to_owned()))
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
        let at = at.ok_or_else(|| Invalid::new("scheduled_at", "is required"))?;
        let at = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
        if at <= now {
            return Err(Invalid::new("scheduled_at", "must be in the future"));
        }
        if at > now + Duration::days(MAX_BOOKING_HORIZON_DAYS) {
            return Err(Invalid::new(
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

/// A validated booking request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booking {
    pub request_id: RequestId,
    pub company_id: CompanyId,
    pub address: Address,
    pub scheduled_at: ScheduledAt,
    pub service_type: ServiceType,
    pub note: Note,
}

/// Where a reservation stands.
///
/// ```text
/// PENDING_PAYMENT ──confirm──▶ CONFIRMED ──complete──▶ CLEANED
///        │                         │
///        └──reject──▶ REJECTED     └──cancel──▶ CANCELLED
/// ```
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
    pub const ALL: [ReservationState; 5] = [
        Self::PendingPayment,
        Self::Confirmed,
        Self::Cleaned,
        Self::Cancelled,
        Self::Rejected,
    ];

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
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Why a booking is rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Payment declined the charge, for this reason.
    Declined(String),
    /// Payment's outcome stayed unknown past the pending timeout; a charge
    /// may have gone through after all, so it must be cancelled.
    PaymentUnknown,
}

impl Reason {
    /// What the customer is told about the rejection.
    pub fn describe(&self) -> &str {
        match self {
            Self::Declined(reason) => reason,
            Self::PaymentUnknown => "payment outcome unknown; booking expired, please book again",
        }
    }
}

/// A move the aggregate was asked to make, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Confirm,
    Reject,
    Cancel,
    Complete,
}

impl Action {
    /// What the move needs, for the caller.
    pub fn needs(self) -> &'static str {
        match self {
            Self::Confirm | Self::Reject => "only a PENDING_PAYMENT booking can be settled",
            Self::Cancel => "only a CONFIRMED reservation can be cancelled",
            Self::Complete => "only a CONFIRMED job can be completed",
        }
    }
}

/// Why the aggregate refused a move.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReservationError {
    /// The caller may not see this reservation; to them it does not exist.
    #[error("reservation not found")]
    NotFound,
    /// The move is not allowed from the reservation's state.
    #[error("is {}; {}", .state.as_str(), .action.needs())]
    WrongState {
        state: ReservationState,
        action: Action,
    },
}

/// What a move announces to other services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservationEvent {
    /// `reservation.cancelled`: payment refunds on it.
    Cancelled { reason: String },
    /// `cleaning.completed`: the customer is told.
    CleaningCompleted { at: DateTime<Utc> },
}

/// A decided move of a reservation.
pub type Transition = aggregate::Transition<Reservation, ReservationEvent>;

/// The aggregate's answer to a command: a transition to store, or
/// `AlreadyDone` when the reservation is already where the command would
/// take it (a repeated call).
pub type Decision = Outcome<Transition>;

/// A reservation as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub reservation_id: ReservationId,
    pub customer_id: CustomerId,
    pub request_id: RequestId,
    pub company_id: CompanyId,
    pub address: Address,
    pub scheduled_at: DateTime<Utc>,
    pub service_type: ServiceType,
    pub note: Note,
    pub price: Money,
    pub state: ReservationState,
    pub payment_id: Option<PaymentId>,
    pub rejection_reason: Option<String>,
    /// Set while a payment that may have gone through must still be cancelled.
    pub void_payment: bool,
    /// Incremented by every stored change; transitions compare and set it.
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Reservation {
    /// A new booking awaiting payment, priced from the price list.
    pub fn book(
        customer_id: CustomerId,
        booking: Booking,
        prices: &PriceList,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            reservation_id: ReservationId::new(),
            customer_id,
            price: booking.service_type.price(prices),
            request_id: booking.request_id,
            company_id: booking.company_id,
            address: booking.address,
            scheduled_at: booking.scheduled_at.get(),
            service_type: booking.service_type,
            note: booking.note,
            state: ReservationState::PendingPayment,
            payment_id: None,
            rejection_reason: None,
            void_payment: false,
            version: 1,
            create_time: now,
            update_time: now,
        }
    }

    /// True when `booking` asks for exactly what this reservation was booked with,
    /// so that a retry under the same request_id may return it.
    pub fn matches(&self, booking: &Booking) -> bool {
        self.company_id == booking.company_id
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

    /// PENDING_PAYMENT → CONFIRMED once payment approved `payment_id`.
    pub fn confirm(
        &self,
        payment_id: PaymentId,
        now: DateTime<Utc>,
    ) -> Result<Decision, ReservationError> {
        match self.state {
            ReservationState::PendingPayment => Ok(self.moved(now, None, |r| {
                r.state = ReservationState::Confirmed;
                r.payment_id = Some(payment_id);
            })),
            ReservationState::Confirmed if self.payment_id.as_ref() == Some(&payment_id) => {
                Ok(Decision::AlreadyDone)
            }
            state => Err(ReservationError::WrongState {
                state,
                action: Action::Confirm,
            }),
        }
    }

    /// PENDING_PAYMENT → REJECTED. When payment's outcome is unknown, the
    /// reservation also asks for its payment to be cancelled.
    pub fn reject(
        &self,
        reason: &Reason,
        now: DateTime<Utc>,
    ) -> Result<Decision, ReservationError> {
        match self.state {
            ReservationState::PendingPayment => Ok(self.moved(now, None, |r| {
                r.state = ReservationState::Rejected;
                r.rejection_reason = Some(reason.describe().to_owned());
                r.void_payment = *reason == Reason::PaymentUnknown;
            })),
            ReservationState::Rejected => Ok(Decision::AlreadyDone),
            state => Err(ReservationError::WrongState {
                state,
                action: Action::Reject,
            }),
        }
    }

    /// CONFIRMED → CANCELLED by its customer, announcing `reservation.cancelled`.
    /// Another customer's reservation does not exist for them.
    pub fn cancel(
        &self,
        by: &CustomerId,
        now: DateTime<Utc>,
    ) -> Result<Decision, ReservationError> {
        if &self.customer_id != by {
            return Err(ReservationError::NotFound);
        }
        match self.state {
            ReservationState::Confirmed => Ok(self.moved(
                now,
                Some(ReservationEvent::Cancelled {
                    reason: "cancelled by the customer".into(),
                }),
                |r| r.state = ReservationState::Cancelled,
            )),
            ReservationState::Cancelled => Ok(Decision::AlreadyDone),
            state => Err(ReservationError::WrongState {
                state,
                action: Action::Cancel,
            }),
        }
    }

    /// CONFIRMED → CLEANED by the company it was booked with, announcing
    /// `cleaning.completed`. Another company's job does not exist for them.
    pub fn complete(
        &self,
        by: &CompanyId,
        now: DateTime<Utc>,
    ) -> Result<Decision, ReservationError> {
        if &self.company_id != by {
            return Err(ReservationError::NotFound);
        }
        match self.state {
            ReservationState::Confirmed => Ok(self.moved(
                now,
                Some(ReservationEvent::CleaningCompleted { at: now }),
                |r| r.state = ReservationState::Cleaned,
            )),
            ReservationState::Cleaned => Ok(Decision::AlreadyDone),
            state => Err(ReservationError::WrongState {
                state,
                action: Action::Complete,
            }),
        }
    }

    /// Records that the payment of a rejected booking has been cancelled.
    pub fn payment_voided(&self, now: DateTime<Utc>) -> Decision {
        if self.void_payment {
            self.moved(now, None, |r| r.void_payment = false)
        } else {
            Decision::AlreadyDone
        }
    }
}

impl Versioned for Reservation {
    fn version(&self) -> i64 {
        self.version
    }

    fn advance(&mut self, now: DateTime<Utc>) {
        self.version += 1;
        self.update_time = now;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id<T>(parse: fn(&str) -> Result<T, Invalid>, value: &str) -> T {
        parse(value).expect("a valid id")
    }

    fn booking(now: DateTime<Utc>) -> Booking {
        Booking {
            request_id: id(RequestId::parse, "k"),
            company_id: id(CompanyId::parse, "acme"),
            address: Address("1 Main St".into()),
            scheduled_at: ScheduledAt(now + Duration::days(1)),
            service_type: ServiceType::Deep,
            note: Note::default(),
        }
    }

    fn alice() -> CustomerId {
        id(CustomerId::parse, "alice")
    }

    fn acme() -> CompanyId {
        id(CompanyId::parse, "acme")
    }

    fn in_state(state: ReservationState) -> Reservation {
        let now = Utc::now();
        let mut r = Reservation::book(alice(), booking(now), &PriceList::default(), now);
        r.state = state;
        if state != ReservationState::PendingPayment {
            r.payment_id = Some(id(PaymentId::parse, "p-1"));
        }
        r
    }

    #[test]
    fn identifiers_reject_empty_long_and_odd_characters() {
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse(&"a".repeat(129)).is_err());
        assert!(RequestId::parse("has space").is_err());
        assert!(RequestId::parse("0b6c5a2e-7f1d-4c8e-9a43-1f0e2d3c4b5a").is_ok());
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
        let r = Reservation::book(alice(), booking(now), &PriceList::default(), now);
        assert_eq!(r.price, Money::krw(PriceList::default().deep));
        assert_eq!(r.state, ReservationState::PendingPayment);
        assert_eq!(r.version, 1);
        assert!(!r.is_established());
    }

    #[test]
    fn a_retry_matches_only_the_same_booking() {
        let now = Utc::now();
        let original = booking(now);
        let r = Reservation::book(alice(), original.clone(), &PriceList::default(), now);
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
        for s in ReservationState::ALL {
            assert_eq!(ReservationState::parse_stored(s.as_str()), Some(s));
        }
    }

    /// A command, as the use cases issue them.
    #[derive(Clone, Debug)]
    enum Command {
        Confirm,
        Decline,
        Expire,
        CancelByOwner,
        CancelByOther,
        CompleteByCompany,
        CompleteByOther,
    }

    fn run(r: &Reservation, command: &Command) -> Result<Decision, ReservationError> {
        let now = Utc::now();
        match command {
            Command::Confirm => r.confirm(id(PaymentId::parse, "p-1"), now),
            Command::Decline => r.reject(&Reason::Declined("card declined".into()), now),
            Command::Expire => r.reject(&Reason::PaymentUnknown, now),
            Command::CancelByOwner => r.cancel(&alice(), now),
            Command::CancelByOther => r.cancel(&id(CustomerId::parse, "mallory"), now),
            Command::CompleteByCompany => r.complete(&acme(), now),
            Command::CompleteByOther => r.complete(&id(CompanyId::parse, "other-co"), now),
        }
    }

    use Command as C;
    use ReservationState as S;

    /// What each command does in each state: the state it moves to, `None`
    /// for an accepted repeat, or the error.
    #[derive(Debug, PartialEq)]
    enum Expect {
        To(S),
        Same,
        Wrong,
        Hidden,
    }

    #[test]
    fn every_command_in_every_state() {
        use Expect::*;
        let table: &[(S, C, Expect)] = &[
            (S::PendingPayment, C::Confirm, To(S::Confirmed)),
            (S::PendingPayment, C::Decline, To(S::Rejected)),
            (S::PendingPayment, C::Expire, To(S::Rejected)),
            (S::PendingPayment, C::CancelByOwner, Wrong),
            (S::PendingPayment, C::CompleteByCompany, Wrong),
            (S::Confirmed, C::Confirm, Same),
            (S::Confirmed, C::Decline, Wrong),
            (S::Confirmed, C::Expire, Wrong),
            (S::Confirmed, C::CancelByOwner, To(S::Cancelled)),
            (S::Confirmed, C::CompleteByCompany, To(S::Cleaned)),
            (S::Confirmed, C::CancelByOther, Hidden),
            (S::Confirmed, C::CompleteByOther, Hidden),
            (S::Cleaned, C::Confirm, Wrong),
            (S::Cleaned, C::CancelByOwner, Wrong),
            (S::Cleaned, C::CompleteByCompany, Same),
            (S::Cancelled, C::Confirm, Wrong),
            (S::Cancelled, C::CancelByOwner, Same),
            (S::Cancelled, C::CompleteByCompany, Wrong),
            (S::Cancelled, C::CancelByOther, Hidden),
            (S::Rejected, C::Confirm, Wrong),
            (S::Rejected, C::Decline, Same),
            (S::Rejected, C::CancelByOwner, Wrong),
            (S::Rejected, C::CompleteByCompany, Wrong),
            (S::Rejected, C::CompleteByOther, Hidden),
        ];
        for (state, command, expected) in table {
            let outcome = match run(&in_state(*state), command) {
                Ok(Decision::Move(t)) => To(t.next.state),
                Ok(Decision::AlreadyDone) => Same,
                Err(ReservationError::WrongState { .. }) => Wrong,
                Err(ReservationError::NotFound) => Hidden,
            };
            assert_eq!(&outcome, expected, "{state:?} + {command:?}");
        }
    }

    #[test]
    fn moves_announce_exactly_cancellations_and_completions() {
        let cancelled = run(&in_state(S::Confirmed), &C::CancelByOwner);
        assert!(matches!(
            cancelled,
            Ok(Decision::Move(aggregate::Transition {
                event: Some(ReservationEvent::Cancelled { .. }),
                ..
            }))
        ));
        let cleaned = run(&in_state(S::Confirmed), &C::CompleteByCompany);
        assert!(matches!(
            cleaned,
            Ok(Decision::Move(aggregate::Transition {
                event: Some(ReservationEvent::CleaningCompleted { .. }),
                ..
            }))
        ));
        for command in [C::Confirm, C::Decline, C::Expire] {
            let Ok(Decision::Move(t)) = run(&in_state(S::PendingPayment), &command) else {
                panic!("{command:?} must move a pending booking");
            };
            assert_eq!(t.event, None, "{command:?}");
        }
    }

    #[test]
    fn only_an_unknown_outcome_asks_for_the_payment_to_be_voided() {
        let Ok(Decision::Move(expired)) = run(&in_state(S::PendingPayment), &C::Expire) else {
            panic!("expiry must move");
        };
        assert!(expired.next.void_payment);
        let Ok(Decision::Move(declined)) = run(&in_state(S::PendingPayment), &C::Decline) else {
            panic!("a decline must move");
        };
        assert!(!declined.next.void_payment);
        assert_eq!(
            declined.next.rejection_reason.as_deref(),
            Some("card declined")
        );
        let voided = expired.next.payment_voided(Utc::now());
        assert!(matches!(voided, Decision::Move(t) if !t.next.void_payment));
        assert_eq!(
            declined.next.payment_voided(Utc::now()),
            Decision::AlreadyDone
        );
    }

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(C::Confirm),
            Just(C::Decline),
            Just(C::Expire),
            Just(C::CancelByOwner),
            Just(C::CancelByOther),
            Just(C::CompleteByCompany),
            Just(C::CompleteByOther),
        ]
    }

    fn legal(from: S, to: S) -> bool {
        matches!(
            (from, to),
            (S::PendingPayment, S::Confirmed | S::Rejected)
                | (S::Confirmed, S::Cancelled | S::Cleaned)
        )
    }

    proptest! {
        /// Whatever commands arrive in whatever order, a reservation only
        /// makes legal moves, each one version on, paid before it is
        /// established, and settles at most once.
        #[test]
        fn any_sequence_of_commands_makes_only_legal_moves(
            commands in proptest::collection::vec(command(), 0..24),
        ) {
            let mut r = in_state(S::PendingPayment);
            let mut moves = 0;
            for command in &commands {
                match run(&r, command) {
                    Ok(Decision::Move(t)) => {
                        prop_assert_eq!(t.expected_version, r.version);
                        prop_assert_eq!(t.next.version, r.version + 1);
                        prop_assert!(legal(r.state, t.next.state),
                            "{:?} → {:?}", r.state, t.next.state);
                        r = t.next;
                        moves += 1;
                    }
                    Ok(Decision::AlreadyDone) | Err(_) => {}
                }
                prop_assert_eq!(r.is_established(), r.payment_id.is_some());
            }
            prop_assert!(moves <= 2);
            prop_assert_eq!(r.version, 1 + moves);
        }
    }
}
