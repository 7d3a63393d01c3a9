//! Notify's reaction to events: each notifying event becomes one stored
//! notification (the inbox and the row commit together), which the
//! deliverer then sends and the recipient's watchers on every replica see
//! once it commits.

use std::sync::Arc;

use ssak3_common::{
    changes::Changes,
    db::Database,
    events::{
        EventType, Handler, HandlerError, Subscription,
        consumer::{HandlerFuture, Malformed},
        inbox,
    },
    ids::{CompanyId, CustomerId, Invalid, ReservationId},
    money::Money,
    time,
};
use ssak3_proto::{
    events::v1::{Event, event::Payload},
    r#type::v1::Money as WireMoney,
};
use tokio::sync::Notify;

use crate::{
    config::{self, Endpoint},
    domain::{Notable, Notification, Recipient},
    storage,
};

/// What notify consumes: the events somebody is told about.
pub const SUBSCRIPTION: Subscription = Subscription {
    queue: "notify",
    events: &[
        EventType::PaymentApproved,
        EventType::PaymentCancelled,
        EventType::CleaningCompleted,
    ],
};

/// Turns events into notifications.
#[derive(Clone, Debug)]
pub struct NotifyOnEvents {
    db: Database,
    endpoints: Arc<[Endpoint]>,
    log_messages: bool,
    deliver: Arc<Notify>,
    changes: Changes,
}

impl NotifyOnEvents {
    pub fn new(
        db: Database,
        endpoints: Arc<[Endpoint]>,
        log_messages: bool,
        deliver: Arc<Notify>,
        changes: Changes,
    ) -> Self {
        Self {
            db,
            endpoints,
            log_messages,
            deliver,
            changes,
        }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        let notable = notable(&event)?;
        let route = |recipient: &Recipient| {
            config::route(&self.endpoints, recipient).map(|endpoint| endpoint.name.clone())
        };
        let notification = Notification::for_event(&event.event_id, &notable, route, time::now());
        let changes = self.changes.clone();
        let stored = self
            .db
            .grouped(move |c| {
                if !inbox::record(c, &event)? {
                    return Ok(None);
                }
                storage::insert(c, &changes, notification.clone()).map(Some)
            })
            .await?;
        if let Some(notification) = stored {
            // Ids only: the text holds addresses, logged only when asked for.
            tracing::info!(
                notification_id = %notification.notification_id,
                recipient = notification.recipient.id(),
                recipient_role = notification.recipient.role(),
                kind = notification.kind.as_str(),
                reservation_id = %notification.reservation_id,
                endpoint = notification.endpoint.as_deref().unwrap_or("none"),
                "notification"
            );
            if self.log_messages {
                tracing::debug!(notification_id = %notification.notification_id,
                    message = %notification.message, "notification text");
            }
            self.deliver.notify_one();
            self.changes.committed(
                &notification.recipient.watch_key(),
                notification.create_time.naive_utc(),
            );
        }
        Ok(())
    }
}

impl Handler for NotifyOnEvents {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}

/// What an event tells notify, or why it cannot be a notification.
pub fn notable(event: &Event) -> Result<Notable, Malformed> {
    let money = |m: &Option<WireMoney>| {
        m.as_ref()
            .map(|m| Money::stored(m.currency_code.clone(), m.units))
    };
    let at = |ts: &Option<prost_types::Timestamp>| ts.as_ref().and_then(time::from_timestamp);
    let ids = |reservation: &str, customer: &str, company: &str| {
        Ok::<_, Invalid>((
            ReservationId::parse(reservation)?,
            CustomerId::parse_field("customer_id", customer)?,
            CompanyId::parse(company)?,
        ))
    };
    match &event.payload {
        Some(Payload::PaymentApproved(p)) => {
            let (reservation_id, customer_id, company_id) =
                ids(&p.reservation_id, &p.customer_id, &p.cleaner_id)?;
            Ok(Notable::PaymentApproved {
                reservation_id,
                payment_id: p.payment_id.clone(),
                customer_id,
                company_id,
                address: p.address.clone(),
                scheduled_at: at(&p.scheduled_at),
                amount: money(&p.amount),
            })
        }
        Some(Payload::PaymentCancelled(p)) => {
            let (reservation_id, customer_id, company_id) =
                ids(&p.reservation_id, &p.customer_id, &p.cleaner_id)?;
            Ok(Notable::PaymentCancelled {
                reservation_id,
                payment_id: p.payment_id.clone(),
                customer_id,
                company_id,
                amount: money(&p.amount),
            })
        }
        Some(Payload::CleaningCompleted(c)) => {
            let (reservation_id, customer_id, company_id) =
                ids(&c.reservation_id, &c.customer_id, &c.cleaner_id)?;
            Ok(Notable::CleaningCompleted {
                reservation_id,
                customer_id,
                company_id,
                completed_at: at(&c.completed_at),
            })
        }
        Some(Payload::ReservationCancelled(_)) | None => {
            Err(Malformed::NotHandled(event.event_type.clone()))
        }
    }
}
