//! Payments and their states. No gRPC, database or broker types here.

use chrono::{DateTime, Utc};

/// An amount in integer minor units of an ISO 4217 currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Money {
    pub currency_code: String,
    pub units: i64,
}

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
        [
            Self::Pending,
            Self::Approved,
            Self::Declined,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// What the reservation service asks to be charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeOrder {
    pub reservation_id: String,
    pub customer_id: String,
    pub cleaner_id: String,
    pub address: String,
    pub scheduled_at: DateTime<Utc>,
    pub amount: Money,
}

/// A payment as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub reservation_id: String,
    pub customer_id: String,
    pub cleaner_id: String,
    pub address: String,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub amount: Money,
    pub state: PaymentState,
    pub decline_reason: Option<String>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

impl Payment {
    /// A new payment awaiting the gateway's answer.
    pub fn pending(order: ChargeOrder, now: DateTime<Utc>) -> Self {
        Self {
            payment_id: uuid::Uuid::new_v4().to_string(),
            reservation_id: order.reservation_id,
            customer_id: order.customer_id,
            cleaner_id: order.cleaner_id,
            address: order.address,
            scheduled_at: Some(order.scheduled_at),
            amount: order.amount,
            state: PaymentState::Pending,
            decline_reason: None,
            create_time: now,
            update_time: now,
        }
    }

    /// The record of a cancellation that arrived before any charge: a later
    /// ApprovePayment for the reservation finds it and charges nothing.
    pub fn cancelled_before_charge(reservation_id: String, now: DateTime<Utc>) -> Self {
        Self {
            payment_id: uuid::Uuid::new_v4().to_string(),
            reservation_id,
            customer_id: String::new(),
            cleaner_id: String::new(),
            address: String::new(),
            scheduled_at: None,
            amount: Money {
                currency_code: "KRW".into(),
                units: 0,
            },
            state: PaymentState::Cancelled,
            decline_reason: None,
            create_time: now,
            update_time: now,
        }
    }

    /// True when `order` asks for something else than this payment was made for
    /// (a different amount or payer under the same reservation id).
    pub fn conflicts_with(&self, order: &ChargeOrder) -> bool {
        self.state != PaymentState::Cancelled
            && (self.amount != order.amount || self.customer_id != order.customer_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in [
            PaymentState::Pending,
            PaymentState::Approved,
            PaymentState::Declined,
            PaymentState::Cancelled,
        ] {
            assert_eq!(PaymentState::parse(state.as_str()), Some(state));
        }
        assert_eq!(PaymentState::parse("REFUNDED"), None);
    }

    #[test]
    fn a_different_amount_under_the_same_reservation_conflicts() {
        let order = ChargeOrder {
            reservation_id: "r".into(),
            customer_id: "alice".into(),
            cleaner_id: "acme".into(),
            address: "1 Main St".into(),
            scheduled_at: Utc::now(),
            amount: Money {
                currency_code: "KRW".into(),
                units: 50_000,
            },
        };
        let payment = Payment::pending(order.clone(), Utc::now());
        assert!(!payment.conflicts_with(&order));
        let mut dearer = order.clone();
        dearer.amount.units += 1;
        assert!(payment.conflicts_with(&dearer));
        let tombstone = Payment::cancelled_before_charge("r".into(), Utc::now());
        assert!(!tombstone.conflicts_with(&dearer));
    }
}
