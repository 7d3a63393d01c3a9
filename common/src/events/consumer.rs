//! What a consuming service implements, and the decision every transport
//! takes for each delivery: acknowledge, retry later, or dead-letter.

use std::{future::Future, pin::Pin, sync::Arc};

use futures_util::FutureExt as _;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prost::Message as _;
use ssak3_proto::events::v1::Event;
use tracing::Instrument as _;

use crate::{
    config::EventsConfig,
    metrics::{self, Labels, Metrics, labels},
};

/// The future a handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A service's reaction to events. It must record the event in its inbox in
/// the transaction that applies it, so that a redelivery changes nothing.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, event: Event) -> HandlerFuture<'_>;
}

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (it is malformed): dead-letter it now.
    #[error("event rejected: {0}")]
    Rejected(#[from] Malformed),
    /// It failed and may work later: retry, at most `max_deliveries` times.
    #[error(transparent)]
    Retry(#[from] anyhow::Error),
    /// What it needs is away for now (the database restarting, its
    /// connections lost): retry with backoff for as long as that lasts. Such
    /// attempts do not count toward `max_deliveries`: an outage longer than
    /// the retries would otherwise dead-letter every event that arrives
    /// during it.
    #[error(transparent)]
    Unavailable(anyhow::Error),
}

/// Why an event can never be applied.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// A kind of event this consumer does not subscribe to.
    #[error("{0} is not handled here")]
    NotHandled(String),
    /// A field of the event breaks its grammar.
    #[error(transparent)]
    Invalid(#[from] crate::ids::Invalid),
}

impl From<crate::ids::Invalid> for HandlerError {
    fn from(invalid: crate::ids::Invalid) -> Self {
        Self::Rejected(invalid.into())
    }
}

impl From<crate::db::StorageError> for HandlerError {
    fn from(error: crate::db::StorageError) -> Self {
        if error.is_transient() {
            Self::Unavailable(error.into())
        } else {
            Self::Retry(error.into())
        }
    }
}

/// What becomes of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    /// Deliver again after this delay.
    Retry(std::time::Duration),
    /// Move to the dead-letter queue, with the reason.
    DeadLetter(String),
}

/// Decodes an envelope; a payload that is not one is poison.
pub fn decode(payload: &[u8]) -> Result<Event, String> {
    let event = Event::decode(payload).map_err(|e| format!("undecodable event: {e}"))?;
    if event.event_id.is_empty() || event.payload.is_none() {
        return Err("event without id or payload".into());
    }
    Ok(event)
}

/// Event lags: 5 ms … ~12 min.
fn lag_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.5, 14,
    ))
}

/// What a consumer reports, by event type.
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    received: Family<Labels, Counter>,
    redelivered: Family<Labels, Counter>,
    dead_lettered: Family<Labels, Counter>,
    handling_duration: Family<Labels, Histogram>,
    lag: Family<Labels, Histogram>,
}

impl ConsumerMetrics {
    /// Registers a consumer's metrics with its service's.
    pub fn register(metrics: &Metrics) -> Self {
        Self {
            received: metrics.register(
                "events_received",
                "Event deliveries, by event type",
                Family::default(),
            ),
            redelivered: metrics.register(
                "events_redelivered",
                "Deliveries of events seen before, by event type",
                Family::default(),
            ),
            dead_lettered: metrics.register(
                "events_dead_lettered",
                "Events given up on, by event type",
                Family::default(),
            ),
            handling_duration: metrics.register(
                "event_handling_duration_seconds",
                "Time to handle an event, by event type",
                metrics::latency_family(),
            ),
            lag: metrics.register(
                "event_lag_seconds",
                "Time from an event's occurrence at its producer to its handling here, by event type",
                Family::<Labels, Histogram>::new_with_constructor(lag_buckets as fn() -> Histogram),
            ),
        }
    }

    /// Records how long `event_type` took from its producer to this consumer.
    fn record_lag(&self, event_type: &str, seconds: f64) {
        self.lag
            .get_or_create(&labels(&[("event_type", event_type)]))
            .observe(seconds.max(0.0));
    }

    /// Records one event delivery and what became of it.
    fn record(&self, event_type: &str, attempt: u32, dead: bool, seconds: f64) {
        let by_type = labels(&[("event_type", event_type)]);
        self.received.get_or_create(&by_type).inc();
        if attempt > 1 {
            self.redelivered.get_or_create(&by_type).inc();
        }
        if dead {
            self.dead_lettered.get_or_create(&by_type).inc();
        }
        self.handling_duration
            .get_or_create(&by_type)
            .observe(seconds);
    }
}

/// A consuming service: its name, its reaction to events, its metrics.
#[derive(Clone)]
pub struct Consumer {
    pub service: &'static str,
    pub handler: Arc<dyn Handler>,
    pub metrics: ConsumerMetrics,
}

impl Consumer {
    /// Handles delivery number `attempt` (1-based) of `event` and decides
    /// its fate; records it in the metrics. The handling is a consumer span
    /// of this service in the trace that `delivery`'s context names.
    pub async fn judge(
        &self,
        event: Event,
        attempt: u32,
        config: &EventsConfig,
        delivery: &Delivery<'_>,
    ) -> Verdict {
        let event_type = event.event_type.clone();
        if let Some(occurred) = event
            .occurred_at
            .as_ref()
            .and_then(crate::time::from_timestamp)
        {
            let lag = crate::time::now() - occurred;
            self.metrics
                .record_lag(&event_type, lag.num_milliseconds() as f64 / 1000.0);
        }
        let started = std::time::Instant::now();
        let verdict = judge(
            &self.handler,
            event,
            attempt,
            config,
            self.service,
            delivery,
        )
        .await;
        let dead = matches!(verdict, Verdict::DeadLetter(_));
        self.metrics
            .record(&event_type, attempt, dead, started.elapsed().as_secs_f64());
        verdict
    }

    /// Records a message that was not even an event.
    pub fn poison(&self) {
        self.metrics.record("undecodable", 1, true, 0.0);
    }
}

/// Where a message came from, as its consumer span reports it.
#[derive(Debug)]
pub struct Delivery<'a> {
    /// `messaging.system`: `rabbitmq`, or the in-process bus.
    pub system: &'static str,
    /// The exchange it was published to.
    pub exchange: &'a str,
    /// The queue it was consumed from.
    pub queue: &'a str,
    /// The trace context it carried (W3C headers).
    pub trace_context: &'a crate::telemetry::Carrier,
}

async fn judge(
    handler: &Arc<dyn Handler>,
    event: Event,
    attempt: u32,
    config: &EventsConfig,
    service: &'static str,
    delivery: &Delivery<'_>,
) -> Verdict {
    let event_id = event.event_id.clone();
    let event_type = event.event_type.clone();
    let queue = service;
    // The semantic conventions for messaging (RabbitMQ): the destination is
    // the exchange, the routing key an attribute of its own.
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", delivery.exchange),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = delivery.system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %delivery.exchange,
        messaging.destination.subscription.name = %delivery.queue,
        messaging.rabbitmq.destination.routing_key = %event_type,
        messaging.consumer.group.name = %service,
        messaging.message.id = %event_id,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::join(&span, service, delivery.trace_context);
    // A handler that panics (a bug, perhaps set off by this event) fails
    // this delivery like any other failure: retried, then dead-lettered,
    // while the consumer goes on with the others.
    let handling = async { handler.handle(event).await };
    let outcome = std::panic::AssertUnwindSafe(handling.instrument(span.clone()))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(HandlerError::Retry(anyhow::anyhow!("the handler panicked"))));
    if let Err(error) = &outcome {
        span.record("otel.status_code", "error");
        span.record(
            "error.type",
            match error {
                HandlerError::Rejected(_) => "rejected",
                HandlerError::Retry(_) => "retry",
                HandlerError::Unavailable(_) => "unavailable",
            },
        );
    }
    match outcome {
        Ok(()) => Verdict::Ack,
        Err(HandlerError::Rejected(reason)) => {
            tracing::error!(%queue, %event_id, %event_type, %reason, "event dead-lettered");
            Verdict::DeadLetter(reason.to_string())
        }
        Err(HandlerError::Retry(cause)) if attempt >= config.max_deliveries => {
            tracing::error!(%queue, %event_id, %event_type, attempt, error = %format!("{cause:#}"),
                "event dead-lettered after its last attempt");
            Verdict::DeadLetter(format!("{cause:#}"))
        }
        Err(HandlerError::Retry(cause)) => {
            tracing::warn!(%queue, %event_id, %event_type, attempt, error = %format!("{cause:#}"),
                "event handling failed; will retry");
            Verdict::Retry(config.backoff(attempt))
        }
        Err(HandlerError::Unavailable(cause)) => {
            tracing::warn!(%queue, %event_id, %event_type, attempt, error = %format!("{cause:#}"),
                "event handling waits for what it needs; will retry");
            Verdict::Retry(config.backoff(attempt))
        }
    }
}

/// The lane of a reservation: events of one reservation are handled one at a time.
pub fn lane_of(reservation_id: &str, lanes: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    reservation_id.hash(&mut hasher);
    (hasher.finish() % lanes.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing(fn() -> HandlerError);

    impl Handler for Failing {
        fn handle(&self, _event: Event) -> HandlerFuture<'_> {
            let error = (self.0)();
            Box::pin(async move { Err(error) })
        }
    }

    /// Panics while handling, or (`true`) before it returns its future.
    struct Panicking(bool);

    impl Handler for Panicking {
        fn handle(&self, _event: Event) -> HandlerFuture<'_> {
            assert!(!self.0, "a bug before the future");
            Box::pin(async move { panic!("a bug") })
        }
    }

    async fn verdict(error: fn() -> HandlerError, attempt: u32) -> Verdict {
        verdict_of(Arc::new(Failing(error)), attempt).await
    }

    async fn verdict_of(handler: Arc<dyn Handler>, attempt: u32) -> Verdict {
        let config = EventsConfig {
            max_deliveries: 5,
            ..EventsConfig::default()
        };
        let carrier = crate::telemetry::Carrier::default();
        let delivery = Delivery {
            system: "test",
            exchange: "ssak3.events",
            queue: "test",
            trace_context: &carrier,
        };
        let event = Event {
            event_id: "e-1".into(),
            event_type: "payment.approved".into(),
            ..Event::default()
        };
        judge(&handler, event, attempt, &config, "test", &delivery).await
    }

    #[tokio::test]
    async fn an_event_whose_handler_panics_is_retried_then_dead_lettered() {
        for early in [false, true] {
            let handler = || Arc::new(Panicking(early));
            assert!(matches!(verdict_of(handler(), 1).await, Verdict::Retry(_)));
            match verdict_of(handler(), 5).await {
                Verdict::DeadLetter(reason) => assert!(reason.contains("panicked"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failing_event_is_dead_lettered_after_its_last_delivery() {
        let failing = || HandlerError::Retry(anyhow::anyhow!("a constraint failed"));
        assert!(matches!(verdict(failing, 4).await, Verdict::Retry(_)));
        assert!(matches!(verdict(failing, 5).await, Verdict::DeadLetter(_)));
    }

    #[tokio::test]
    async fn an_event_waiting_for_the_database_is_retried_however_long_it_is_away() {
        let unavailable = || {
            HandlerError::from(crate::db::StorageError::Query(
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ClosedConnection,
                    Box::new("terminating connection due to administrator command".to_owned()),
                ),
            ))
        };
        assert!(matches!(unavailable(), HandlerError::Unavailable(_)));
        for attempt in [5, 50, 500] {
            match verdict(unavailable, attempt).await {
                Verdict::Retry(delay) => {
                    assert!(delay <= std::time::Duration::from_secs(5), "{delay:?}");
                }
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
    }
}
