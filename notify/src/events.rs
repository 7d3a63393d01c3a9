//! Notify's reaction to events: each notifying event becomes one stored
//! notification (the inbox and the row commit together), which the
//! deliverer then sends and watchers see at once.

use std::sync::Arc;

use ssak3_common::{
    db::Database,
    events::{Handler, HandlerError, consumer::HandlerFuture, inbox},
    time,
};
use ssak3_proto::events::v1::{Event, Money, event::Payload};
use tokio::sync::{Notify, broadcast};

use crate::storage::{self, Notification};

/// Turns events into notifications.
#[derive(Clone, Debug)]
pub struct NotifyOnEvents {
    db: Database,
    deliver: Arc<Notify>,
    feed: broadcast::Sender<Notification>,
}

impl NotifyOnEvents {
    pub fn new(db: Database, deliver: Arc<Notify>, feed: broadcast::Sender<Notification>) -> Self {
        Self { db, deliver, feed }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        let notification = notification_for(&event).map_err(HandlerError::Rejected)?;
        let stored = self
            .db
            .transaction(move |c| {
                if !inbox::record(c, &event)? {
                    return Ok(None);
                }
                storage::insert(c, &notification)?;
                Ok(Some(notification))
            })
            .await?;
        if let Some(notification) = stored {
            self.deliver.notify_one();
            // Nobody watching is fine.
            let _ = self.feed.send(notification);
        }
        Ok(())
    }
}

impl Handler for NotifyOnEvents {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}

fn money(amount: Option<&Money>) -> String {
    amount.map_or_else(String::new, |m| format!("{} {}", m.units, m.currency_code))
}

fn instant(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(time::from_timestamp)
        .map_or_else(|| "an unknown time".into(), |at| at.to_rfc3339())
}

/// Who is told what about `event`.
pub fn notification_for(event: &Event) -> Result<Notification, String> {
    let (recipient, kind, message) = match &event.payload {
        Some(Payload::PaymentApproved(p)) => (
            &p.cleaner_id,
            "PAYMENT_APPROVED",
            format!(
                "New booking {}: {} at {}; {} paid by customer {} (payment {}).",
                p.reservation_id,
                p.address,
                instant(p.scheduled_at.as_ref()),
                money(p.amount.as_ref()),
                p.customer_id,
                p.payment_id
            ),
        ),
        Some(Payload::PaymentCancelled(p)) => (
            &p.cleaner_id,
            "PAYMENT_CANCELLED",
            format!(
                "Booking {} was cancelled; {} refunded to customer {} (payment {}).",
                p.reservation_id,
                money(p.amount.as_ref()),
                p.customer_id,
                p.payment_id
            ),
        ),
        Some(Payload::CleaningCompleted(c)) => (
            &c.customer_id,
            "CLEANING_COMPLETED",
            format!(
                "Your cleaning {} by {} is done ({}).",
                c.reservation_id,
                c.cleaner_id,
                instant(c.completed_at.as_ref())
            ),
        ),
        _ => return Err(format!("notify does not handle {}", event.event_type)),
    };
    if recipient.is_empty() {
        return Err(format!("{} event without a recipient", event.event_type));
    }
    let now = time::now().naive_utc();
    Ok(Notification {
        notification_id: uuid::Uuid::new_v4().to_string(),
        recipient_id: recipient.clone(),
        kind: kind.to_owned(),
        reservation_id: event.reservation_id.clone(),
        message,
        event_id: event.event_id.clone(),
        create_time: now,
        delivery_state: storage::PENDING.to_owned(),
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
    })
}
