//! Settles bookings whose payment outcome is unknown.
//!
//! A reservation still PENDING_PAYMENT after the pending timeout was
//! answered with UNAVAILABLE (payment slow or down) or its caller went away.
//! Payment may nevertheless have approved it. The reconciler rejects it (a
//! conditional update, so it cannot overtake a concurrent confirmation) and
//! marks its payment for voiding; then it asks payment to cancel every
//! marked payment until payment confirms. CancelPayment is idempotent and,
//! for a reservation with no payment yet, records the cancellation so that
//! a late ApprovePayment charges nothing. Once settled there is never a
//! CONFIRMED reservation without an APPROVED payment, nor an APPROVED
//! payment for a reservation that is not CONFIRMED.
//!
//! Each replica runs a reconciler. A round claims the reservations it
//! settles (see [`storage::claim_unsettled`]), so two replicas never settle
//! the same one at once; a reservation left unsettled (payment unreachable)
//! is released for the next round, and the claims of a replica that died
//! run out after `reconcile.claim_ms`.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    config::ReconcileConfig,
    domain::{Decision, Reason, Reservation, ReservationState},
    payment_client::PaymentClient,
    storage::{self, DecideError, Repository},
};

/// Reservations handled per round.
const BATCH: i64 = 100;

/// The reconciliation loop of one reservation service.
#[derive(Debug)]
pub struct Reconciler {
    reservations: Repository,
    payment: PaymentClient,
    pending_timeout: Duration,
    interval: Duration,
    claim: chrono::TimeDelta,
}

impl Reconciler {
    pub fn new(reservations: Repository, payment: PaymentClient, config: &ReconcileConfig) -> Self {
        Self {
            reservations,
            payment,
            pending_timeout: Duration::from_millis(config.pending_timeout_ms),
            interval: Duration::from_millis(config.interval_ms),
            claim: chrono::TimeDelta::milliseconds(config.claim_ms as i64),
        }
    }

    /// Runs rounds until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            if let Err(error) = self.round().await {
                tracing::warn!(error = format!("{error:#}"), "reconciliation round failed");
            }
        }
    }

    /// One round: claim the unsettled reservations, expire the stale
    /// pending ones, and void the payments of those expired.
    pub async fn round(&self) -> anyhow::Result<()> {
        let now = ssak3_common::time::now();
        // An absurdly long timeout means "never": nothing is older than the minimum instant.
        let cutoff = chrono::Duration::from_std(self.pending_timeout)
            .ok()
            .and_then(|timeout| now.checked_sub_signed(timeout))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let until = now + self.claim;
        let db = self.reservations.database();
        let claimed = db
            .write(move |c| storage::claim_unsettled(c, cutoff, BATCH, now, until))
            .await?;
        for reservation in claimed {
            let id = reservation.reservation_id.clone();
            let settled = self.settle(reservation).await;
            if !matches!(settled, Ok(true)) {
                let released = id.clone();
                db.write(move |c| storage::release_claim(c, &released))
                    .await?;
            }
            settled?;
        }
        Ok(())
    }

    /// Expires `reservation` if it is still pending, then voids its payment
    /// if that is due; false when payment could not be reached yet.
    async fn settle(&self, mut reservation: Reservation) -> anyhow::Result<bool> {
        let id = reservation.reservation_id.clone();
        if reservation.state == ReservationState::PendingPayment {
            match self
                .reservations
                .decide(reservation, |r, now| r.reject(&Reason::PaymentUnknown, now))
                .await
            {
                Ok(rejected) => {
                    tracing::info!(reservation_id = %id, "expired a booking whose payment outcome was unknown");
                    reservation = rejected;
                }
                // Confirmed meanwhile: nothing to settle.
                Err(DecideError::Refused(_)) => return Ok(true),
                Err(other) => return Err(other.into()),
            }
        }
        if !reservation.void_payment {
            return Ok(true);
        }
        match self
            .payment
            .cancel(&id, Reason::PaymentUnknown.describe())
            .await
        {
            Ok(()) => {
                self.reservations
                    .decide(reservation, |r, now| {
                        Ok::<Decision, _>(r.payment_voided(now))
                    })
                    .await?;
                tracing::info!(reservation_id = %id, "payment of an expired booking cancelled");
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(reservation_id = %id, %error, "cannot cancel payment yet; will retry");
                Ok(false)
            }
        }
    }
}
