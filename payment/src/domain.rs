//! Payments and their state machine. The aggregate decides every move:
//! [`Payment::settle`] with the gateway's answer and [`Payment::cancel`]
//! return the [`Transition`] to store (with the event it announces) or say
//! why not. No gRPC, database or broker types here.
//!
//! ```text
//! PENDING ──settle(approved)──▶ APPROVED ──cancel──▶ CANCELLED (refunded)
//!    │ └──settle(declined)──▶ DECLINED
//!    └──cancel──▶ CANCELLED (nothing was charged)
//! ```
//! A cancellation may also arrive before any charge was asked for: it is
//! recorded as a CANCELLED payment without an order, so that a late
//! approval for the reservation finds it and charges nothing.

use chrono::{DateTime, Utc};
pub use ssak3_common::ids::{CompanyId, CustomerId, PaymentId, ReservationId};
use ssak3_common::{
    aggregate::{self, Outcome, Versioned},
    money::Money,
};

/// Where a payment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentState {
    /// Recorded; the gateway has not answered yet. Never shown as a settled payment.
    Pending,
    Approved,
    Declined,
    /// Refunded, or cancelled before any charge went through.
    Cancelled,
}

impl PaymentState {
    pub const ALL: [PaymentState; 4] = [
        Self::Pending,
        Self::Approved,
        Self::Declined,
        Self::Cancelled,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Approved => "APPROVED",
            Self::Declined => "DECLINED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Reads a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

/// What the reservation service asks to be charged for a booking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub customer_id: CustomerId,
    pub company_id: CompanyId,
    pub address: String,
    pub scheduled_at: DateTime<Utc>,
    pub amount: Money,
}

/// The gateway's answer to a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Approved,
    Declined { reason: String },
}

/// What a move announces to other services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentEvent {
    /// `payment.approved`: the company learns of the booking.
    Approved,
    /// `payment.cancelled`: an announced approval was refunded.
    Cancelled,
}

/// Why the aggregate refused a move.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// A charge came back for a payment that is no longer pending (it was
    /// cancelled while the gateway charged: the caller must refund).
    #[error("payment is {}, not PENDING", .0.as_str())]
    NotPending(PaymentState),
}

/// A decided move of a payment.
pub type Transition = aggregate::Transition<Payment, PaymentEvent>;

/// The aggregate's answer to a command: a transition to store, or
/// `AlreadyDone` when the payment is already where the command would take it.
pub type Decision = Outcome<Transition>;

/// A payment as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: PaymentId,
    pub reservation_id: ReservationId,
    /// What was to be charged; `None` when the reservation was cancelled
    /// before any charge was asked for.
    pub order: Option<Order>,
    pub state: PaymentState,
    pub decline_reason: Option<String>,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Payment {
    /// A new payment awaiting the gateway's answer.
    pub fn pending(reservation_id: ReservationId, order: Order, now: DateTime<Utc>) -> Self {
        Self {
            payment_id: PaymentId::new(),
            reservation_id,
            order: Some(order),
            state: PaymentState::Pending,
            decline_reason: None,
            version: 1,
            create_time: now,
            update_time: now,
        }
    }

    /// The record of a cancellation that arrived before any charge: a later
    /// approval for the reservation finds it and charges nothing.
    pub fn cancelled_before_charge(reservation_id: ReservationId, now: DateTime<Utc>) -> Self {
        Self {
            payment_id: PaymentId::new(),
            reservation_id,
            order: None,
            state: PaymentState::Cancelled,
            decline_reason: None,
            version: 1,
            create_time: now,
            update_time: now,
        }
    }

    /// True when `order` asks for something else than this payment was made
    /// for (a different amount or payer under the same reservation id).
    pub fn conflicts_with(&self, order: &Order) -> bool {
        self.order.as_ref().is_some_and(|mine| {
            mine.amount != order.amount || mine.customer_id != order.customer_id
        })
    }

    /// The customer who pays, unless nothing was ever ordered.
    pub fn customer_id(&self) -> Option<&CustomerId> {
        self.order.as_ref().map(|order| &order.customer_id)
    }

    /// PENDING → APPROVED (announced) or DECLINED with the gateway's answer.
    pub fn settle(
        &self,
        outcome: &ChargeOutcome,
        now: DateTime<Utc>,
    ) -> Result<Decision, PaymentError> {
        if self.state != PaymentState::Pending {
            return Err(PaymentError::NotPending(self.state));
        }
        Ok(match outcome {
            ChargeOutcome::Approved => self.moved(now, Some(PaymentEvent::Approved), |p| {
                p.state = PaymentState::Approved;
            }),
            ChargeOutcome::Declined { reason } => self.moved(now, None, |p| {
                p.state = PaymentState::Declined;
                p.decline_reason = Some(reason.clone());
            }),
        })
    }

    /// → CANCELLED. An approved payment's cancellation is announced (the
    /// caller refunds it); a pending one was never charged; a declined one
    /// has nothing to cancel.
    pub fn cancel(&self, now: DateTime<Utc>) -> Decision {
        match self.state {
            PaymentState::Approved => self.moved(now, Some(PaymentEvent::Cancelled), |p| {
                p.state = PaymentState::Cancelled;
            }),
            PaymentState::Pending => self.moved(now, None, |p| p.state = PaymentState::Cancelled),
            PaymentState::Declined | PaymentState::Cancelled => Decision::AlreadyDone,
        }
    }
}

impl Versioned for Payment {
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

    fn order(units: i64) -> Order {
        Order {
            customer_id: CustomerId::parse("alice").expect("valid"),
            company_id: CompanyId::parse("acme").expect("valid"),
            address: "1 Main St".into(),
            scheduled_at: Utc::now(),
            amount: Money::krw(units),
        }
    }

    fn reservation() -> ReservationId {
        ReservationId::parse("r-1").expect("valid")
    }

    #[test]
    fn state_names_round_trip() {
        for state in PaymentState::ALL {
            assert_eq!(PaymentState::parse(state.as_str()), Some(state));
        }
        assert_eq!(PaymentState::parse("REFUNDED"), None);
    }

    #[test]
    fn a_different_amount_under_the_same_reservation_conflicts() {
        let payment = Payment::pending(reservation(), order(50_000), Utc::now());
        assert!(!payment.conflicts_with(&order(50_000)));
        assert!(payment.conflicts_with(&order(50_001)));
        let early = Payment::cancelled_before_charge(reservation(), Utc::now());
        assert!(!early.conflicts_with(&order(50_001)));
        assert_eq!(early.customer_id(), None);
    }

    #[test]
    fn every_command_in_every_state() {
        use PaymentState as S;
        let approved = ChargeOutcome::Approved;
        let declined = ChargeOutcome::Declined {
            reason: "card declined".into(),
        };
        let now = Utc::now();
        for state in S::ALL {
            let mut payment = Payment::pending(reservation(), order(1), now);
            payment.state = state;
            let after = |d: Decision| match d {
                Decision::Move(t) => Some((t.next.state, t.event)),
                Decision::AlreadyDone => None,
            };
            let settled = payment.settle(&approved, now).map(after);
            let refused = payment.settle(&declined, now).map(after);
            let cancelled = after(payment.cancel(now));
            match state {
                S::Pending => {
                    assert_eq!(
                        settled,
                        Ok(Some((S::Approved, Some(PaymentEvent::Approved))))
                    );
                    assert_eq!(refused, Ok(Some((S::Declined, None))));
                    assert_eq!(cancelled, Some((S::Cancelled, None)));
                }
                S::Approved => {
                    assert_eq!(settled, Err(PaymentError::NotPending(S::Approved)));
                    assert_eq!(
                        cancelled,
                        Some((S::Cancelled, Some(PaymentEvent::Cancelled)))
                    );
                }
                S::Declined | S::Cancelled => {
                    assert_eq!(settled, Err(PaymentError::NotPending(state)));
                    assert_eq!(cancelled, None);
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Command {
        Approve,
        Decline,
        Cancel,
    }

    proptest! {
        /// Whatever arrives in whatever order, a payment settles at most
        /// once, is announced as cancelled only after it was announced as
        /// approved, and each move is one version on.
        #[test]
        fn any_sequence_announces_a_cancellation_only_after_an_approval(
            commands in proptest::collection::vec(
                prop_oneof![Just(Command::Approve), Just(Command::Decline), Just(Command::Cancel)],
                0..16,
            ),
        ) {
            let now = Utc::now();
            let mut payment = Payment::pending(reservation(), order(1), now);
            let mut announced = Vec::new();
            for command in &commands {
                let decision = match command {
                    Command::Approve => payment.settle(&ChargeOutcome::Approved, now),
                    Command::Decline => payment.settle(
                        &ChargeOutcome::Declined { reason: "no".into() }, now),
                    Command::Cancel => Ok(payment.cancel(now)),
                };
                if let Ok(Decision::Move(t)) = decision {
                    prop_assert_eq!(t.expected_version, payment.version);
                    prop_assert_eq!(t.next.version, payment.version + 1);
                    announced.extend(t.event);
                    payment = t.next;
                }
            }
            prop_assert!(matches!(
                announced.as_slice(),
                [] | [PaymentEvent::Approved] | [PaymentEvent::Approved, PaymentEvent::Cancelled]
            ));
            prop_assert!(payment.version <= 3);
        }
    }
}
