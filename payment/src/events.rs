//! Payment's reaction to events: a cancelled reservation is refunded.

use ssak3_common::events::{Handler, HandlerError, consumer::HandlerFuture, inbox};
use ssak3_proto::events::v1::{Event, event::Payload};

use crate::payments::Payments;

/// Refunds the payment of each cancelled reservation, once.
#[derive(Clone, Debug)]
pub struct RefundOnCancel {
    payments: Payments,
}

impl RefundOnCancel {
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        let Some(Payload::ReservationCancelled(cancelled)) = &event.payload else {
            return Err(HandlerError::Rejected(format!(
                "payment does not handle {}",
                event.event_type
            )));
        };
        let db = self.payments.database();
        let id = event.event_id.clone();
        if db.read(move |c| inbox::seen(c, &id)).await? {
            return Ok(());
        }
        // Idempotent: a second run after a crash refunds nothing more and
        // announces nothing twice (its state changes are conditional).
        self.payments
            .cancel(&cancelled.reservation_id)
            .await
            .map_err(|e| HandlerError::Retry(e.into()))?;
        db.transaction(move |c| inbox::record(c, &event)).await?;
        Ok(())
    }
}

impl Handler for RefundOnCancel {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}
