//! The use cases: approve (charge once per reservation), cancel (refund), read.
//!
//! Approve first records a PENDING payment under the reservation's unique
//! id, then charges the gateway with the reservation id as idempotency key,
//! then settles the row. Concurrent or repeated approvals for one
//! reservation share the row and the gateway charge, so the customer pays
//! once. Cancel may arrive before, during or after a charge: before, it
//! leaves a CANCELLED record that a late approval finds; during or after, the
//! charge is refunded (refunds are idempotent per key, so repeating a cancel
//! also heals a refund that failed before).

use std::sync::Arc;

use ssak3_common::{
    ApiError,
    db::{Database, StorageError},
    events::{self, outbox},
    time,
};
use ssak3_proto::events::v1::{self as ev, Event, event::Payload};

use crate::{
    domain::{ChargeOrder, Payment, PaymentState},
    gateway::{Charge, ChargeOutcome, GatewayError, PaymentGateway},
    storage::{self, StateChange},
};

/// Why a payment use case failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("no payment {0}")]
    NotFound(String),
    #[error("reservation {0} already has a payment with a different amount or payer")]
    Conflict(String),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<PaymentError> for ApiError {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::NotFound(what) => ApiError::NotFound(format!("no payment {what}")),
            PaymentError::Conflict(_) => ApiError::AlreadyExists(error.to_string()),
            PaymentError::Gateway(cause) => ApiError::Unavailable {
                message: format!("{cause}; pay again shortly"),
                retry_after: std::time::Duration::from_secs(2),
            },
            PaymentError::Storage(cause) => ApiError::Internal(cause.into()),
        }
    }
}

/// The payment use cases over a database and a gateway.
#[derive(Clone)]
pub struct Payments {
    db: Database,
    gateway: Arc<dyn PaymentGateway>,
    events: outbox::Waker,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments").field("db", &self.db).finish()
    }
}

impl Payments {
    pub fn new(db: Database, gateway: Arc<dyn PaymentGateway>, events: outbox::Waker) -> Self {
        Self {
            db,
            gateway,
            events,
        }
    }

    /// The payment database (the event handler records its inbox there).
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// Charges for `order` once, however often it is asked.
    pub async fn approve(&self, order: ChargeOrder) -> Result<Payment, PaymentError> {
        let payment = self
            .insert_or_find(Payment::pending(order.clone(), time::now()))
            .await?;
        if payment.conflicts_with(&order) {
            return Err(PaymentError::Conflict(order.reservation_id));
        }
        if payment.state != PaymentState::Pending {
            return Ok(payment);
        }

        let charge = Charge {
            key: payment.reservation_id.clone(),
            customer_id: payment.customer_id.clone(),
            amount: payment.amount.clone(),
        };
        let outcome = self.gateway.charge(&charge).await?;
        let approved = outcome == ChargeOutcome::Approved;
        let change = match outcome {
            ChargeOutcome::Approved => StateChange::to(PaymentState::Approved, None),
            ChargeOutcome::Declined { reason } => {
                StateChange::to(PaymentState::Declined, Some(reason))
            }
        };
        let id = payment.payment_id.clone();
        // The company learns of the booking from `payment.approved`, written with the approval.
        let announcement = approved.then(|| approved_event(&payment));
        let settled = self
            .db
            .transaction(move |c| {
                let settled = storage::transition(c, &id, PaymentState::Pending, change)?;
                if let Some(event) = announcement.filter(|_| settled.is_some()) {
                    outbox::record(c, &event)?;
                }
                Ok(settled)
            })
            .await?;
        if let Some(settled) = settled {
            if approved {
                self.events.wake();
            }
            return Ok(settled);
        }
        let current = self.find_by_reservation_id(&payment.reservation_id).await?;
        if approved && current.state == PaymentState::Cancelled {
            // Cancelled while the gateway was charging: give the money back.
            self.gateway.refund(&charge.key).await?;
        }
        Ok(current)
    }

    /// Cancels the payment of a reservation, refunding it if it was charged.
    pub async fn cancel(&self, reservation_id: &str) -> Result<Payment, PaymentError> {
        let payment = self
            .insert_or_find(Payment::cancelled_before_charge(
                reservation_id.to_owned(),
                time::now(),
            ))
            .await?;
        match payment.state {
            PaymentState::Declined => return Ok(payment),
            PaymentState::Approved => {
                self.gateway.refund(reservation_id).await?;
            }
            PaymentState::Pending | PaymentState::Cancelled => {}
        }
        if payment.state != PaymentState::Cancelled {
            let id = payment.payment_id.clone();
            let from = payment.state;
            // Only an approval that was announced is announced as cancelled.
            let announcement = (from == PaymentState::Approved).then(|| cancelled_event(&payment));
            let announced = announcement.is_some();
            let moved = self
                .db
                .transaction(move |c| {
                    let moved = storage::transition(
                        c,
                        &id,
                        from,
                        StateChange::to(PaymentState::Cancelled, None),
                    )?;
                    if let Some(event) = announcement.filter(|_| moved.is_some()) {
                        outbox::record(c, &event)?;
                    }
                    Ok(moved.is_some())
                })
                .await?;
            if moved && announced {
                self.events.wake();
            }
        }
        // Idempotent: heals a refund lost earlier, and catches a charge that
        // completed between the read above and the state change.
        self.gateway.refund(reservation_id).await?;
        self.find_by_reservation_id(reservation_id).await
    }

    pub async fn find_by_reservation_id(
        &self,
        reservation_id: &str,
    ) -> Result<Payment, PaymentError> {
        let id = reservation_id.to_owned();
        self.db
            .read(move |c| storage::find_by_reservation_id(c, &id))
            .await?
            .ok_or_else(|| PaymentError::NotFound(format!("for reservation {reservation_id}")))
    }

    pub async fn find_by_payment_id(&self, payment_id: &str) -> Result<Payment, PaymentError> {
        let id = payment_id.to_owned();
        self.db
            .read(move |c| storage::find_by_payment_id(c, &id))
            .await?
            .ok_or_else(|| PaymentError::NotFound(payment_id.to_owned()))
    }

    /// Inserts `payment`, or returns the one the reservation already has.
    async fn insert_or_find(&self, payment: Payment) -> Result<Payment, PaymentError> {
        let reservation_id = payment.reservation_id.clone();
        Ok(self
            .db
            .insert_or_find(payment, storage::insert, move |c| {
                storage::find_by_reservation_id(c, &reservation_id)
            })
            .await?)
    }
}

fn event_money(payment: &Payment) -> ev::Money {
    ev::Money {
        currency_code: payment.amount.currency_code.clone(),
        units: payment.amount.units,
    }
}

/// `payment.approved`: what the company needs to know of the booking.
fn approved_event(payment: &Payment) -> Event {
    events::new_event(
        &payment.reservation_id,
        Payload::PaymentApproved(ev::PaymentApproved {
            payment_id: payment.payment_id.clone(),
            reservation_id: payment.reservation_id.clone(),
            customer_id: payment.customer_id.clone(),
            cleaner_id: payment.cleaner_id.clone(),
            address: payment.address.clone(),
            scheduled_at: payment.scheduled_at.map(time::to_timestamp),
            amount: Some(event_money(payment)),
        }),
    )
}

/// `payment.cancelled`: the refund of an approved payment.
fn cancelled_event(payment: &Payment) -> Event {
    events::new_event(
        &payment.reservation_id,
        Payload::PaymentCancelled(ev::PaymentCancelled {
            payment_id: payment.payment_id.clone(),
            reservation_id: payment.reservation_id.clone(),
            customer_id: payment.customer_id.clone(),
            cleaner_id: payment.cleaner_id.clone(),
            amount: Some(event_money(payment)),
        }),
    )
}
