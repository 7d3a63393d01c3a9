//! Notifications and their delivery. A notifying event becomes one
//! [`Notification`] for its recipient ([`Notification::for_event`]); its
//! delivery moves PENDING → DELIVERED, or after failed attempts back to
//! PENDING with a later retry, and finally FAILED ([`Notification::attempted`]).
//! No gRPC, database or broker types here.

use chrono::{DateTime, Utc};
use ssak3_common::{
    aggregate::Outcome,
    ids::{self, CompanyId, CustomerId, ReservationId},
    money::Money,
};

/// What a notification tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotificationKind {
    /// To the company: a booking was paid for.
    PaymentApproved,
    /// To the company: a booking was cancelled and refunded.
    PaymentCancelled,
    /// To the customer: the cleaning is done.
    CleaningCompleted,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 3] = [
        Self::PaymentApproved,
        Self::PaymentCancelled,
        Self::CleaningCompleted,
    ];

    /// The name stored and sent to webhooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentApproved => "PAYMENT_APPROVED",
            Self::PaymentCancelled => "PAYMENT_CANCELLED",
            Self::CleaningCompleted => "CLEANING_COMPLETED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Where a notification's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet; the next attempt is due at `next_attempt_at`.
    Pending,
    Delivered,
    /// Out of attempts.
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == name)
    }
}

/// Who a notification is for: a role and an id, so that a customer and a
/// company sharing a name never share an inbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Recipient {
    Customer(CustomerId),
    Company(CompanyId),
}

impl Recipient {
    /// The role stored with the notification.
    pub fn role(&self) -> &'static str {
        match self {
            Self::Customer(_) => "customer",
            Self::Company(_) => "company",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Customer(id) => id.as_str(),
            Self::Company(id) => id.as_str(),
        }
    }

    /// The recipient's row in the watch clock (`change_clock`).
    pub fn watch_key(&self) -> String {
        format!("{}:{}", self.role(), self.id())
    }

    /// Reads a stored role and id.
    pub fn stored(role: &str, id: &str) -> Option<Self> {
        match role {
            "customer" => CustomerId::parse(id).ok().map(Self::Customer),
            "company" => CompanyId::parse(id).ok().map(Self::Company),
            _ => None,
        }
    }
}

/// A notifying event, as notify reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notable {
    PaymentApproved {
        reservation_id: ReservationId,
        payment_id: String,
        customer_id: CustomerId,
        company_id: CompanyId,
        address: String,
        scheduled_at: Option<DateTime<Utc>>,
        amount: Option<Money>,
    },
    PaymentCancelled {
        reservation_id: ReservationId,
        payment_id: String,
        customer_id: CustomerId,
        company_id: CompanyId,
        amount: Option<Money>,
    },
    CleaningCompleted {
        reservation_id: ReservationId,
        customer_id: CustomerId,
        company_id: CompanyId,
        completed_at: Option<DateTime<Utc>>,
    },
}

/// How delivery attempts are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: std::time::Duration,
    pub max: std::time::Duration,
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based): `base`,
    /// doubling up to `max`.
    pub fn delay(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A decided delivery move, stored with a compare-and-set on `attempts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub expected_attempts: i32,
    pub notification: Notification,
}

/// The aggregate's answer to a delivery outcome.
pub type Decision = Outcome<Transition>;

/// A stored notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub notification_id: String,
    pub recipient: Recipient,
    pub kind: NotificationKind,
    pub reservation_id: ReservationId,
    pub message: String,
    /// The event it was made from: one notification per event.
    pub event_id: String,
    pub create_time: DateTime<Utc>,
    /// The webhook endpoint it goes to; None when no endpoint serves its
    /// recipient (it is only logged, and DELIVERED at once).
    pub endpoint: Option<String>,
    pub delivery_state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

impl Notification {
    /// The notification an event makes, due now for delivery to the
    /// endpoint `route` names for its recipient, if any.
    pub fn for_event(
        event_id: &str,
        notable: &Notable,
        route: impl FnOnce(&Recipient) -> Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        let (recipient, kind, reservation_id, message) = match notable {
            Notable::PaymentApproved {
                reservation_id,
                payment_id,
                customer_id,
                company_id,
                address,
                scheduled_at,
                amount,
            } => (
                Recipient::Company(company_id.clone()),
                NotificationKind::PaymentApproved,
                reservation_id,
                format!(
                    "New booking {reservation_id}: {address} at {}; {} paid by customer {customer_id} (payment {payment_id}).",
                    instant(*scheduled_at),
                    money(amount.as_ref()),
                ),
            ),
            Notable::PaymentCancelled {
                reservation_id,
                payment_id,
                customer_id,
                company_id,
                amount,
            } => (
                Recipient::Company(company_id.clone()),
                NotificationKind::PaymentCancelled,
                reservation_id,
                format!(
                    "Booking {reservation_id} was cancelled; {} refunded to customer {customer_id} (payment {payment_id}).",
                    money(amount.as_ref()),
                ),
            ),
            Notable::CleaningCompleted {
                reservation_id,
                customer_id,
                company_id,
                completed_at,
            } => (
                Recipient::Customer(customer_id.clone()),
                NotificationKind::CleaningCompleted,
                reservation_id,
                format!(
                    "Your cleaning {reservation_id} by {company_id} is done ({}).",
                    instant(*completed_at),
                ),
            ),
        };
        let endpoint = route(&recipient);
        Self {
            notification_id: ids::fresh(),
            recipient,
            kind,
            reservation_id: reservation_id.clone(),
            message,
            event_id: event_id.to_owned(),
            create_time: now,
            delivery_state: if endpoint.is_some() {
                DeliveryState::Pending
            } else {
                DeliveryState::Delivered
            },
            endpoint,
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
        }
    }

    /// The outcome of one delivery attempt: delivered, or failed with
    /// `error` — retried later, or FAILED once out of attempts.
    pub fn attempted(
        &self,
        outcome: Result<(), String>,
        policy: &RetryPolicy,
        now: DateTime<Utc>,
    ) -> Decision {
        if self.delivery_state != DeliveryState::Pending {
            return Outcome::AlreadyDone;
        }
        let mut next = self.clone();
        next.attempts = self.attempts + 1;
        match outcome {
            Ok(()) => {
                next.delivery_state = DeliveryState::Delivered;
                next.next_attempt_at = now;
                next.last_error = None;
            }
            Err(error) => {
                let attempt = u32::try_from(next.attempts).unwrap_or(u32::MAX);
                if attempt >= policy.max_attempts {
                    next.delivery_state = DeliveryState::Failed;
                    next.next_attempt_at = now;
                } else {
                    let delay = chrono::TimeDelta::from_std(policy.delay(attempt))
                        .unwrap_or(chrono::TimeDelta::MAX);
                    next.next_attempt_at = now.checked_add_signed(delay).unwrap_or(now);
                }
                next.last_error = Some(error);
            }
        }
        Outcome::Move(Transition {
            expected_attempts: self.attempts,
            notification: next,
        })
    }
}

fn money(amount: Option<&Money>) -> String {
    amount.map_or_else(|| "an unknown amount".into(), Money::to_string)
}

fn instant(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "an unknown time".into(), |at| at.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn to_default(_: &Recipient) -> Option<String> {
        Some("default".into())
    }

    #[test]
    fn without_an_endpoint_a_notification_is_only_logged() {
        let logged = Notification::for_event("e-1", &approved(), |_| None, Utc::now());
        assert_eq!(logged.delivery_state, DeliveryState::Delivered);
        assert_eq!(logged.endpoint, None);
    }

    fn approved() -> Notable {
        Notable::PaymentApproved {
            reservation_id: ReservationId::parse("r-1").expect("valid"),
            payment_id: "p-1".into(),
            customer_id: CustomerId::parse("alice").expect("valid"),
            company_id: CompanyId::parse("acme").expect("valid"),
            address: "12 Gangnam-daero".into(),
            scheduled_at: None,
            amount: Some(Money::krw(90_000)),
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(200),
            max: Duration::from_secs(1),
        }
    }

    #[test]
    fn payments_go_to_the_company_completions_to_the_customer() {
        let now = Utc::now();
        let paid = Notification::for_event("e-1", &approved(), to_default, now);
        assert_eq!(
            paid.recipient,
            Recipient::Company(CompanyId::parse("acme").expect("valid"))
        );
        assert_eq!(paid.kind, NotificationKind::PaymentApproved);
        assert!(
            paid.message.contains("90000 KRW paid by customer alice"),
            "{}",
            paid.message
        );
        let done = Notification::for_event(
            "e-2",
            &Notable::CleaningCompleted {
                reservation_id: ReservationId::parse("r-1").expect("valid"),
                customer_id: CustomerId::parse("alice").expect("valid"),
                company_id: CompanyId::parse("acme").expect("valid"),
                completed_at: None,
            },
            to_default,
            now,
        );
        assert_eq!(
            done.recipient,
            Recipient::Customer(CustomerId::parse("alice").expect("valid"))
        );
        assert_eq!(done.kind, NotificationKind::CleaningCompleted);
        assert_eq!(done.delivery_state, DeliveryState::Pending);
    }

    #[test]
    fn stored_names_round_trip() {
        for kind in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(kind.as_str()), Some(kind));
        }
        for state in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(state.as_str()), Some(state));
        }
        assert_eq!(NotificationKind::parse("PAYMENT_APPROVEDX"), None);
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let now = Utc::now();
        let mut n = Notification::for_event("e-1", &approved(), to_default, now);
        let mut delays = Vec::new();
        for _ in 0..3 {
            let Outcome::Move(t) = n.attempted(Err("503".into()), &policy(), now) else {
                panic!("a pending notification must move");
            };
            assert_eq!(t.expected_attempts, n.attempts);
            n = t.notification;
            delays.push((n.next_attempt_at - now).num_milliseconds());
        }
        assert_eq!(n.delivery_state, DeliveryState::Failed);
        assert_eq!(n.attempts, 3);
        assert_eq!(delays[..2], [200, 400]);
        assert_eq!(n.attempted(Ok(()), &policy(), now), Outcome::AlreadyDone);
    }

    proptest! {
        /// Whatever the outcomes, delivery ends after at most `max_attempts`
        /// attempts, each recorded once, and a delivered notification stays so.
        #[test]
        fn delivery_ends_within_the_attempts(outcomes in proptest::collection::vec(any::<bool>(), 0..10)) {
            let now = Utc::now();
            let mut n = Notification::for_event("e-1", &approved(), to_default, now);
            for ok in outcomes {
                let outcome = if ok { Ok(()) } else { Err("down".to_owned()) };
                if let Outcome::Move(t) = n.attempted(outcome, &policy(), now) {
                    prop_assert_eq!(t.notification.attempts, n.attempts + 1);
                    n = t.notification;
                }
            }
            prop_assert!(n.attempts <= 3);
            if n.delivery_state == DeliveryState::Delivered {
                prop_assert!(n.last_error.is_none());
            }
        }
    }
}
