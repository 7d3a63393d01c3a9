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

use std::time::Duration;

use ssak3_common::{config::ReconcileConfig, db::Database, time};
use tokio::sync::watch;

use crate::{payment_client::PaymentClient, storage};

/// Reservations handled per round.
const BATCH: i64 = 100;

/// The reason stored on reservations the reconciler rejects.
pub const ABANDONED: &str = "payment outcome unknown; booking expired, please book again";

/// The reconciliation loop of one reservation service.
#[derive(Debug)]
pub struct Reconciler {
    db: Database,
    payment: PaymentClient,
    pending_timeout: Duration,
    interval: Duration,
}

impl Reconciler {
    pub fn new(db: Database, payment: PaymentClient, config: &ReconcileConfig) -> Self {
        Self {
            db,
            payment,
            pending_timeout: Duration::from_millis(config.pending_timeout_ms),
            interval: Duration::from_millis(config.interval_ms),
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

    /// One round: expire stale pending bookings, then void their payments.
    pub async fn round(&self) -> anyhow::Result<()> {
        // An absurdly long timeout means "never": nothing is older than the minimum instant.
        let cutoff = chrono::Duration::from_std(self.pending_timeout)
            .ok()
            .and_then(|timeout| time::now().checked_sub_signed(timeout))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let stale = self
            .db
            .read(move |c| storage::find_stale_pending(c, cutoff, BATCH))
            .await?;
        for id in stale {
            let rejected = self
                .db
                .transaction({
                    let id = id.clone();
                    move |c| storage::reject(c, &id, ABANDONED, true)
                })
                .await?;
            if rejected {
                tracing::info!(reservation_id = %id, "expired a booking whose payment outcome was unknown");
            }
        }

        let to_void = self
            .db
            .read(|c| storage::find_payments_to_void(c, BATCH))
            .await?;
        for id in to_void {
            match self.payment.cancel(&id, ABANDONED).await {
                Ok(_) => {
                    self.db
                        .transaction({
                            let id = id.clone();
                            move |c| storage::payment_voided(c, &id)
                        })
                        .await?;
                    tracing::info!(reservation_id = %id, "payment of an expired booking cancelled");
                }
                Err(status) => {
                    tracing::warn!(reservation_id = %id, %status, "cannot cancel payment yet; will retry");
                }
            }
        }
        Ok(())
    }
}
