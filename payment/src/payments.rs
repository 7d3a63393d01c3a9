//! The use cases: approve (charge once per reservation), cancel (refund),
//! read. They orchestrate; the aggregate ([`Payment`]) decides each move.
//!
//! Approve first records a PENDING payment under the reservation's unique
//! id, then charges the gateway with the reservation id as idempotency key,
//! then settles the payment. Concurrent or repeated approvals for one
//! reservation share the row and the gateway charge, so the customer pays
//! once. Cancel may arrive before, during or after a charge: before, it
//! leaves a CANCELLED record that a late approval finds; during or after, the
//! charge is refunded (refunds are idempotent per key, so repeating a cancel
//! also heals a refund that failed before).

use std::{sync::Arc, time::Duration};

use ssak3_common::{
    aggregate,
    db::{Batches, Database, StorageError},
    events::outbox,
    ids::{PaymentId, ReservationId},
    time,
};

use crate::{
    domain::{ChargeOutcome, Decision, Order, Payment, PaymentError, PaymentState},
    gateway::{Charge, GatewayError, PaymentGateway},
    storage,
};

/// Why a payment use case failed; each variant carries the ids involved.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("no payment {0}")]
    NotFound(String),
    #[error("reservation {0} already has a payment with a different amount or payer")]
    Conflict(ReservationId),
    /// The gateway could not be used; `cause` is for the log.
    #[error("payment gateway unavailable for reservation {reservation_id}: {cause}")]
    GatewayUnavailable {
        reservation_id: ReservationId,
        cause: GatewayError,
        retry_after: Duration,
    },
    #[error("payment of reservation {0} kept changing under concurrent writers")]
    Contended(ReservationId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a command left a payment as it was.
type DecideError = aggregate::DecideError<PaymentError>;

/// The payment use cases over a database and a gateway.
#[derive(Clone)]
pub struct Payments {
    db: Database,
    gateway: Arc<dyn PaymentGateway>,
    inserts: Batches<Payment, bool>,
    moves: aggregate::Moves<Payment>,
    retry_after: Duration,
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payments").field("db", &self.db).finish()
    }
}

impl Payments {
    /// `retry_after` is what callers are told to wait while the gateway is unavailable.
    pub fn new(
        db: Database,
        gateway: Arc<dyn PaymentGateway>,
        events: outbox::Waker,
        retry_after: Duration,
    ) -> Self {
        Self {
            inserts: Batches::new(db.clone(), storage::insert_all),
            moves: aggregate::Moves::new(db.clone(), events),
            db,
            gateway,
            retry_after,
        }
    }

    /// The payment database (the event handler records its inbox there).
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// Charges for `order` once, however often it is asked.
    pub async fn approve(
        &self,
        reservation_id: ReservationId,
        order: Order,
    ) -> Result<Payment, PaymentsError> {
        let payment = self
            .insert_or_find(Payment::pending(
                reservation_id.clone(),
                order.clone(),
                time::now(),
            ))
            .await?;
        if payment.conflicts_with(&order) {
            return Err(PaymentsError::Conflict(reservation_id));
        }
        if payment.state != PaymentState::Pending {
            return Ok(payment);
        }
        let outcome = self
            .gateway
            .charge(&Charge {
                key: reservation_id.as_str().to_owned(),
                customer_id: order.customer_id.as_str().to_owned(),
                amount: order.amount.clone(),
            })
            .await
            .map_err(|cause| self.unavailable(&reservation_id, cause))?;
        match self.decide(payment, |p, now| p.settle(&outcome, now)).await {
            Ok(settled) => Ok(settled),
            // Settled by a concurrent approval, or cancelled while the gateway charged.
            Err(DecideError::Refused(PaymentError::NotPending(_))) => {
                let current = self.find_by_reservation_id(&reservation_id).await?;
                if outcome == ChargeOutcome::Approved && current.state == PaymentState::Cancelled {
                    // Give the money back.
                    self.refund(&reservation_id).await?;
                }
                Ok(current)
            }
            Err(other) => Err(self.decided(&reservation_id, other)),
        }
    }

    /// Cancels the payment of a reservation, refunding it if it was charged.
    pub async fn cancel(&self, reservation_id: &ReservationId) -> Result<Payment, PaymentsError> {
        let payment = self
            .insert_or_find(Payment::cancelled_before_charge(
                reservation_id.clone(),
                time::now(),
            ))
            .await?;
        match payment.state {
            PaymentState::Declined => return Ok(payment),
            PaymentState::Approved => self.refund(reservation_id).await?,
            PaymentState::Pending | PaymentState::Cancelled => {}
        }
        self.decide(payment, |p, now| Ok(p.cancel(now)))
            .await
            .map_err(|e| self.decided(reservation_id, e))?;
        // Idempotent: heals a refund lost earlier, and catches a charge that
        // completed between the read above and the state change.
        self.refund(reservation_id).await?;
        self.find_by_reservation_id(reservation_id).await
    }

    pub async fn find_by_reservation_id(
        &self,
        reservation_id: &ReservationId,
    ) -> Result<Payment, PaymentsError> {
        let id = reservation_id.clone();
        self.db
            .read(move |c| storage::find_by_reservation_id(c, &id))
            .await?
            .ok_or_else(|| PaymentsError::NotFound(format!("for reservation {reservation_id}")))
    }

    pub async fn find_by_payment_id(
        &self,
        payment_id: &PaymentId,
    ) -> Result<Payment, PaymentsError> {
        let id = payment_id.clone();
        self.db
            .read(move |c| storage::find_by_payment_id(c, &id))
            .await?
            .ok_or_else(|| PaymentsError::NotFound(payment_id.to_string()))
    }

    async fn refund(&self, reservation_id: &ReservationId) -> Result<(), PaymentsError> {
        self.gateway
            .refund(reservation_id.as_str())
            .await
            .map_err(|cause| self.unavailable(reservation_id, cause))
    }

    /// Decides `command` on `current` and stores the move.
    async fn decide<C>(&self, current: Payment, command: C) -> Result<Payment, DecideError>
    where
        C: Fn(&Payment, chrono::DateTime<chrono::Utc>) -> Result<Decision, PaymentError>,
    {
        let id = current.payment_id.clone();
        let db = self.db.clone();
        aggregate::decide(&self.moves, current, command, || {
            let db = db.clone();
            let id = id.clone();
            async move { db.read(move |c| storage::find_by_payment_id(c, &id)).await }
        })
        .await
    }

    fn decided(&self, reservation_id: &ReservationId, error: DecideError) -> PaymentsError {
        match error {
            // The commands that reach here cannot be refused.
            DecideError::Refused(_) | DecideError::Contended | DecideError::Vanished => {
                PaymentsError::Contended(reservation_id.clone())
            }
            DecideError::Storage(cause) => PaymentsError::Storage(cause),
        }
    }

    fn unavailable(&self, reservation_id: &ReservationId, cause: GatewayError) -> PaymentsError {
        PaymentsError::GatewayUnavailable {
            reservation_id: reservation_id.clone(),
            cause,
            retry_after: self.retry_after,
        }
    }

    /// Inserts `payment`, or returns the one the reservation already has.
    async fn insert_or_find(&self, payment: Payment) -> Result<Payment, PaymentsError> {
        let reservation_id = payment.reservation_id.clone();
        Ok(self
            .inserts
            .insert_or_find(payment, move |c| {
                storage::find_by_reservation_id(c, &reservation_id)
            })
            .await?)
    }
}
