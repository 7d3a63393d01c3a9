//! Notify's reaction to events: each notifying event becomes one stored
//! notification (the inbox and the row commit together), which the
//! deliverer then sends and the recipient's watchers on every replica see
//! once it commits.

use std::sync::Arc;

use ssak3_common::{
    changes::Changes,
    db::{Batches, Database, DbConnection},
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

/// Turns events into notifications: the events in flight are stored in
/// batches ([`Batches`]), a statement per table for all of them.
#[derive(Clone, Debug)]
pub struct NotifyOnEvents {
    batches: Batches<(Event, Notification), Option<Notification>>,
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
        let marks = changes.clone();
        Self {
            batches: Batches::new(db, move |c, items| store(c, &marks, items)),
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
        if let Some(notification) = self.batches.write((event, notification)).await? {
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

/// Stores the notifications of the events new to the inbox: for each item,
/// in order, its notification as stored, or `None` if its event was seen
/// before.
fn store(
    c: &mut DbConnection,
    changes: &Changes,
    items: &[(Event, Notification)],
) -> diesel::QueryResult<Vec<Option<Notification>>> {
    let events: Vec<&Event> = items.iter().map(|(event, _)| event).collect();
    let new = inbox::record_all(c, &events)?;
    let fresh = items
        .iter()
        .zip(&new)
        .filter(|(_, new)| **new)
        .map(|((_, notification), _)| notification.clone())
        .collect();
    let mut stored = storage::insert_all(c, changes, fresh)?.into_iter();
    Ok(new
        .into_iter()
        .map(|new| if new { stored.next() } else { None })
        .collect())
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
