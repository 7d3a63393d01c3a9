//! Events between services: what they are, where they go, and how they are
//! delivered at least once with nothing lost and no effect applied twice.
//!
//! - A producer writes an event to its **outbox** in the transaction that
//!   changes its state ([`outbox::record`]); the [`outbox::Relay`] publishes
//!   it with confirmation and only then marks it sent.
//! - A consumer records the event id in its **inbox** in the transaction that
//!   applies the event ([`inbox::record`]); a redelivery finds it and changes
//!   nothing. The consumer acknowledges only after that commit.
//! - The [`Bus`] is RabbitMQ in production or a durable in-process queue in
//!   one-process mode; both give the same guarantees.

pub mod amqp;
pub mod consumer;
pub mod embedded;
pub mod inbox;
pub mod outbox;

use ssak3_proto::events::v1::{Event, event::Payload};

pub use consumer::{Handler, HandlerError};

use crate::{config::EventsConfig, time};

/// The kinds of event; the routing key is the event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    PaymentApproved,
    ReservationCancelled,
    PaymentCancelled,
    CleaningCompleted,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        Self::PaymentApproved,
        Self::ReservationCancelled,
        Self::PaymentCancelled,
        Self::CleaningCompleted,
    ];

    pub fn routing_key(self) -> &'static str {
        match self {
            Self::PaymentApproved => "payment.approved",
            Self::ReservationCancelled => "reservation.cancelled",
            Self::PaymentCancelled => "payment.cancelled",
            Self::CleaningCompleted => "cleaning.completed",
        }
    }

    pub fn of(payload: &Payload) -> Self {
        match payload {
            Payload::PaymentApproved(_) => Self::PaymentApproved,
            Payload::ReservationCancelled(_) => Self::ReservationCancelled,
            Payload::PaymentCancelled(_) => Self::PaymentCancelled,
            Payload::CleaningCompleted(_) => Self::CleaningCompleted,
        }
    }
}

/// A new event about `reservation_id`, with a fresh id and the trace
/// context of the current span (the work that causes it). `version` is the
/// step of the reservation's life the event records, as its producer knows
/// it; readers order a reservation's events by it, whatever order they
/// arrive in.
pub fn new_event(reservation_id: &str, version: i64, payload: Payload) -> Event {
    let kind = EventType::of(&payload);
    let mut trace = crate::telemetry::current_carrier();
    let mut field = |name: &str| trace.remove(name).unwrap_or_default();
    Event {
        event_id: crate::ids::fresh(),
        event_type: kind.routing_key().to_owned(),
        occurred_at: Some(time::to_timestamp(time::now())),
        reservation_id: reservation_id.to_owned(),
        version,
        traceparent: field("traceparent"),
        tracestate: field("tracestate"),
        baggage: field("baggage"),
        payload: Some(payload),
    }
}

/// A consuming service's queue and the event types it needs. Each consuming
/// service declares its own; the process that wires services together
/// gathers them into a [`Topology`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The consuming service, which names its queue.
    pub queue: &'static str,
    pub events: &'static [EventType],
}

/// Every consuming service's subscription. Each transport declares all of
/// them before it publishes, so that no event is ever published before the
/// queues that must receive it exist.
#[derive(Clone, Debug, Default)]
pub struct Topology(std::sync::Arc<[Subscription]>);

impl Topology {
    pub fn new(subscriptions: impl Into<std::sync::Arc<[Subscription]>>) -> Self {
        Self(subscriptions.into())
    }

    pub fn subscriptions(&self) -> &[Subscription] {
        &self.0
    }

    /// The queues that receive events of `routing_key`.
    pub fn subscribers<'a>(
        &'a self,
        routing_key: &'a str,
    ) -> impl Iterator<Item = &'static str> + 'a {
        self.0
            .iter()
            .filter(move |s| s.events.iter().any(|t| t.routing_key() == routing_key))
            .map(|s| s.queue)
    }
}

/// `messaging.system` of spans over RabbitMQ.
pub const MESSAGING_RABBITMQ: &str = "rabbitmq";
/// `messaging.system` of spans over the in-process bus of `ssak3 up`.
pub const MESSAGING_EMBEDDED: &str = "ssak3_embedded";

/// Broker names derived from the configured namespace.
#[derive(Clone, Debug)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(config: &EventsConfig) -> Self {
        Self {
            namespace: config.namespace.clone(),
        }
    }

    /// The topic exchange every event is published to.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Where messages a consumer gives up on are routed.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// The durable queue of a consuming service.
    pub fn queue(&self, service: &str) -> String {
        format!("{}.{service}", self.namespace)
    }

    /// The dead-letter queue of a consuming service.
    pub fn dead_letter_queue(&self, service: &str) -> String {
        format!("{}.{service}.dead", self.namespace)
    }
}

/// An event ready to leave a service: the encoded envelope and what the
/// broker needs to route it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub event_id: String,
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// The trace context it carries (W3C `traceparent`, `tracestate`, `baggage`).
    pub trace_context: crate::telemetry::Carrier,
}

impl From<&Event> for Message {
    /// The message that carries `event`.
    fn from(event: &Event) -> Self {
        use prost::Message as _;
        Self {
            event_id: event.event_id.clone(),
            routing_key: event.event_type.clone(),
            payload: event.encode_to_vec(),
            trace_context: trace_context_of(event),
        }
    }
}

/// The trace context an event was written in, as headers.
pub fn trace_context_of(event: &Event) -> crate::telemetry::Carrier {
    [
        ("traceparent", &event.traceparent),
        ("tracestate", &event.tracestate),
        ("baggage", &event.baggage),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(name, value)| (name.to_owned(), value.clone()))
    .collect()
}

/// Why publishing stopped after `confirmed` messages went out.
#[derive(Debug, thiserror::Error)]
#[error("{confirmed} of the batch confirmed, then: {source}")]
pub struct PublishError {
    pub confirmed: usize,
    #[source]
    pub source: anyhow::Error,
}

/// The event transport: RabbitMQ, or the durable in-process queue of the one-process mode.
#[derive(Clone, Debug)]
pub enum Bus {
    Amqp(amqp::AmqpBus),
    Embedded(embedded::EmbeddedBus),
}

impl Bus {
    /// The transport's `messaging.system` in spans.
    pub fn messaging_system(&self) -> &'static str {
        match self {
            Self::Amqp(_) => MESSAGING_RABBITMQ,
            Self::Embedded(_) => MESSAGING_EMBEDDED,
        }
    }

    /// Publishes `messages` in order; each is stored by the transport before
    /// this returns. On failure, the first `confirmed` went out.
    pub async fn publish(&self, messages: &[Message]) -> Result<(), PublishError> {
        match self {
            Self::Amqp(bus) => bus.publish(messages).await,
            Self::Embedded(bus) => bus.publish(messages).await,
        }
    }

    /// Messages `service`'s consumer gave up on.
    pub async fn dead_letter_count(&self, service: &'static str) -> anyhow::Result<u64> {
        match self {
            Self::Amqp(bus) => Ok(u64::from(bus.dead_letter_count(service).await?)),
            Self::Embedded(bus) => Ok(u64::try_from(bus.dead_letter_count(service).await?)?),
        }
    }

    /// Events waiting in `service`'s queue (on RabbitMQ: ready, not counting
    /// those a consumer holds).
    pub async fn queue_depth(&self, service: &'static str) -> anyhow::Result<u64> {
        match self {
            Self::Amqp(bus) => Ok(u64::from(bus.queue_depth(service).await?)),
            Self::Embedded(bus) => Ok(u64::try_from(bus.queue_depth(service).await?)?),
        }
    }

    /// Delivers the events of `service`'s queue to `handler` until `stop`
    /// turns true, reconnecting after failures.
    pub async fn consume(
        &self,
        service: &'static str,
        handler: std::sync::Arc<dyn Handler>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let consumer = consumer::Consumer {
            service,
            handler,
            metrics: consumer::ConsumerMetrics::register(&metrics),
        };
        match self {
            Self::Amqp(bus) => bus.consume(consumer, stop).await,
            Self::Embedded(bus) => bus.consume(consumer, stop).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_routes_each_event_type_to_its_subscribers() {
        const ALL: Subscription = Subscription {
            queue: "everything",
            events: &EventType::ALL,
        };
        const REFUNDS: Subscription = Subscription {
            queue: "refunds",
            events: &[EventType::ReservationCancelled],
        };
        let topology = Topology::new(vec![REFUNDS, ALL]);
        assert_eq!(
            topology
                .subscribers("reservation.cancelled")
                .collect::<Vec<_>>(),
            ["refunds", "everything"]
        );
        assert_eq!(
            topology.subscribers("payment.approved").collect::<Vec<_>>(),
            ["everything"]
        );
        assert_eq!(topology.subscribers("no.such").count(), 0);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = EventsConfig::default();
        assert_eq!(config.backoff(1).as_millis(), 100);
        assert_eq!(config.backoff(3).as_millis(), 400);
        assert_eq!(config.backoff(40).as_millis(), 5_000);
    }
}
