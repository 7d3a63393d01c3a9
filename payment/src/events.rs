//! Payment and events: what it announces (the envelopes of its aggregate's
//! events), what it subscribes to, and its reaction: a cancelled
//! reservation is refunded.
//!
//! Versions are the steps of the reservation's life these events record:
//! its payment is the second step (after the booking), a refund the fourth
//! (after the cancellation).

use ssak3_common::{
    events::{
        EventType, Handler, HandlerError, Subscription,
        consumer::{HandlerFuture, Malformed},
        inbox, new_event,
    },
    ids::ReservationId,
    time,
};
use ssak3_proto::events::v1::{self as ev, Event, event::Payload};

use crate::{
    domain::{PaymentEvent, Transition},
    payments::Payments,
};

/// The step of a reservation's life its payment's approval records.
const APPROVED_STEP: i64 = 2;
/// The step a refund records (after the cancellation, step 3).
const REFUNDED_STEP: i64 = 4;

/// What payment consumes: cancellations, to refund them.
pub const SUBSCRIPTION: Subscription = Subscription {
    queue: "payment",
    events: &[EventType::ReservationCancelled],
};

/// The envelope of `transition`'s event, if it announces one.
pub fn envelope(transition: &Transition) -> Option<Event> {
    let payment = &transition.next;
    let order = payment.order.as_ref()?;
    let id = payment.reservation_id.as_str();
    let amount = Some((&order.amount).into());
    let (step, payload) = match transition.event? {
        PaymentEvent::Approved => (
            APPROVED_STEP,
            Payload::PaymentApproved(ev::PaymentApproved {
                payment_id: payment.payment_id.as_str().to_owned(),
                reservation_id: id.to_owned(),
                customer_id: order.customer_id.as_str().to_owned(),
                cleaner_id: order.company_id.as_str().to_owned(),
                address: order.address.clone(),
                scheduled_at: Some(time::to_timestamp(order.scheduled_at)),
                amount,
            }),
        ),
        PaymentEvent::Cancelled => (
            REFUNDED_STEP,
            Payload::PaymentCancelled(ev::PaymentCancelled {
                payment_id: payment.payment_id.as_str().to_owned(),
                reservation_id: id.to_owned(),
                customer_id: order.customer_id.as_str().to_owned(),
                cleaner_id: order.company_id.as_str().to_owned(),
                amount,
            }),
        ),
    };
    Some(new_event(id, step, payload))
}

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
            return Err(Malformed::NotHandled(event.event_type).into());
        };
        let reservation_id = ReservationId::parse(&cancelled.reservation_id)?;
        let db = self.payments.database();
        let id = event.event_id.clone();
        if db.read(move |c| inbox::seen(c, &id)).await? {
            return Ok(());
        }
        // Idempotent: a second run after a crash refunds nothing more and
        // announces nothing twice (its moves are compare-and-set).
        self.payments
            .cancel(&reservation_id)
            .await
            .map_err(|e| HandlerError::Retry(e.into()))?;
        db.grouped(move |c| inbox::record(c, &event)).await?;
        Ok(())
    }
}

impl Handler for RefundOnCancel {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}
