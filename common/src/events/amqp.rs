//! The RabbitMQ transport (lapin).
//!
//! Topology, declared idempotently by every service on every (re)connect so
//! that no event is ever published before its queues exist:
//! - `<ns>.events`, a durable topic exchange; routing key = event type;
//! - per consuming service a durable quorum queue `<ns>.<service>` bound to
//!   the event types it needs, dead-lettering into `<ns>.dead` → `<ns>.<service>.dead`.
//!
//! Publishing waits for publisher confirms. Consuming uses manual acks
//! after the handler's transaction commits, a bounded prefetch, and lanes
//! keyed by reservation so one reservation's events are handled in turn.
//! Recovery is a plain loop: when the connection or channel fails, the
//! publisher reopens on the next batch and the consumer reconnects with
//! backoff; unacknowledged deliveries come back from the broker and the
//! inbox makes them no-ops.

use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio::sync::{Mutex, mpsc, watch};

use super::{
    Message, Names, PublishError, Topology,
    consumer::{self, Consumer, Verdict},
};
use crate::config::EventsConfig;

/// Largest AMQP frame this client agrees to (unless the URL sets `frame_max`);
/// larger messages are split into several frames.
const FRAME_MAX: u32 = 16 * 1024;
/// How long a batch may wait for its confirmations before the channel is reopened.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// RabbitMQ as the event bus. Cheap to clone; connections open on first use.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    names: Names,
    config: EventsConfig,
    /// Named after the process's role, so operators (and tests) can find its connections.
    client_name: String,
    topology: Topology,
    publisher: Mutex<Option<(Connection, Channel)>>,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("names", &self.inner.names)
            .finish()
    }
}

impl AmqpBus {
    /// A bus on the broker at `url` that declares the queues of `topology`;
    /// `client_name` labels its connections.
    pub fn new(url: &str, config: &EventsConfig, client_name: &str, topology: Topology) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                names: Names::new(config),
                config: config.clone(),
                client_name: format!("{}/{client_name}", config.namespace),
                topology,
                publisher: Mutex::new(None),
            }),
        }
    }

    pub fn names(&self) -> &Names {
        &self.inner.names
    }

    /// Opens a connection and a channel and declares the topology on it.
    pub async fn connect(&self, role: &str) -> anyhow::Result<(Connection, Channel)> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("{}/{role}", self.inner.client_name).into());
        let mut uri: lapin::uri::AMQPUri = self.inner.url.parse().map_err(|e| {
            anyhow::anyhow!(
                "broker URL {} is invalid: {e}",
                crate::db::redact(&self.inner.url)
            )
        })?;
        // The client buffers 32 frames each way: at the broker's usual 128 KiB
        // that is 8 MiB per connection for events of a few hundred bytes.
        uri.query.frame_max = uri.query.frame_max.or(Some(FRAME_MAX));
        let connection = Connection::connect_uri(uri, properties)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the message broker at {}",
                    crate::db::redact(&self.inner.url)
                )
            })?;
        let channel = connection.create_channel().await?;
        self.declare(&channel).await?;
        Ok((connection, channel))
    }

    /// Connects once and declares the topology, so that a start-up can say
    /// plainly that the broker is unreachable.
    pub async fn check(&self) -> anyhow::Result<()> {
        let (connection, _) = tokio::time::timeout(PUBLISH_TIMEOUT, self.connect("check"))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the message broker at {} does not answer",
                    crate::db::redact(&self.inner.url)
                )
            })??;
        let _ = connection.close(200, "checked".into()).await;
        Ok(())
    }

    async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        let names = &self.inner.names;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                names.exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .context("declaring the event exchange")?;
        channel
            .exchange_declare(
                names.dead_letter_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await
            .context("declaring the dead-letter exchange")?;
        for subscription in self.inner.topology.subscriptions() {
            let queue = names.queue(subscription.queue);
            let dead = names.dead_letter_queue(subscription.queue);
            let mut arguments = quorum();
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(names.dead_letter_exchange().into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(queue.clone().into()),
            );
            channel
                .queue_declare(
                    queue.clone().into(),
                    QueueDeclareOptions::durable(),
                    arguments,
                )
                .await
                .with_context(|| format!("declaring queue {queue}"))?;
            for kind in subscription.events {
                channel
                    .queue_bind(
                        queue.clone().into(),
                        names.exchange().into(),
                        kind.routing_key().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            channel
                .queue_declare(
                    dead.clone().into(),
                    QueueDeclareOptions::durable(),
                    quorum(),
                )
                .await
                .with_context(|| format!("declaring queue {dead}"))?;
            channel
                .queue_bind(
                    dead.into(),
                    names.dead_letter_exchange().into(),
                    queue.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Publishes in order and waits for the broker to confirm each message.
    pub async fn publish(&self, messages: &[Message]) -> Result<(), PublishError> {
        let mut publisher = self.inner.publisher.lock().await;
        // A broker that vanished without closing the socket never confirms.
        let result =
            tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_on(&mut publisher, messages))
                .await
                .unwrap_or_else(|_| {
                    Err(PublishError {
                        confirmed: 0,
                        source: anyhow::anyhow!("no confirmation within {PUBLISH_TIMEOUT:?}"),
                    })
                });
        if result.is_err() {
            // Reopen on the next batch: the channel may be closed or in doubt.
            if let Some((connection, _)) = publisher.take() {
                let _ = connection.close(200, "reopening".into()).await;
            }
        }
        result
    }

    async fn publish_on(
        &self,
        publisher: &mut Option<(Connection, Channel)>,
        messages: &[Message],
    ) -> Result<(), PublishError> {
        let failed =
            |confirmed: usize| move |source: anyhow::Error| PublishError { confirmed, source };
        let usable = publisher
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !usable {
            let (connection, channel) = self.connect("publisher").await.map_err(failed(0))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| failed(0)(e.into()))?;
            *publisher = Some((connection, channel));
        }
        let Some((_, channel)) = publisher.as_ref() else {
            return Err(failed(0)(anyhow::anyhow!("no publisher channel")));
        };
        let exchange = self.inner.names.exchange();
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let mut properties = BasicProperties::default()
                .with_message_id(message.event_id.clone().into())
                .with_type(message.routing_key.clone().into())
                .with_content_type("application/x-protobuf".into())
                .with_delivery_mode(2);
            if !message.trace_context.is_empty() {
                let mut headers = FieldTable::default();
                for (name, value) in &message.trace_context {
                    headers.insert(
                        name.as_str().into(),
                        AMQPValue::LongString(value.clone().into()),
                    );
                }
                properties = properties.with_headers(headers);
            }
            let sent = channel
                .basic_publish(
                    exchange.clone().into(),
                    message.routing_key.clone().into(),
                    BasicPublishOptions::default(),
                    &message.payload,
                    properties,
                )
                .await;
            match sent {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => return Err(failed(0)(e.into())),
            }
        }
        let mut confirmed = 0;
        for confirm in confirms {
            match confirm.await {
                Ok(confirmation) if confirmation.is_ack() => confirmed += 1,
                Ok(_) => {
                    return Err(failed(confirmed)(anyhow::anyhow!(
                        "the broker refused a message"
                    )));
                }
                Err(e) => return Err(failed(confirmed)(e.into())),
            }
        }
        Ok(())
    }

    /// Consumes `service`'s queue until `stop`, reconnecting with backoff.
    pub async fn consume(&self, consumer: Consumer, mut stop: watch::Receiver<bool>) {
        let service = consumer.service;
        let mut failures = 0u32;
        while !crate::server::stopping(&stop) {
            match self.consume_once(&consumer, &mut stop).await {
                Ok(()) => break,
                Err(error) => {
                    failures += 1;
                    let delay = self.inner.config.backoff(failures);
                    tracing::warn!(service, error = %format!("{error:#}"), retry_in = ?delay,
                        "event consumer disconnected; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// One connection's worth of consuming: returns Ok when stopped, Err when the connection failed.
    async fn consume_once(
        &self,
        consumer: &Consumer,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let service = consumer.service;
        let config = &self.inner.config;
        let queue = self.inner.names.queue(service);
        let (connection, channel) = self.connect(service).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.clone().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(%queue, "consuming events");

        let lanes = config.lanes.max(1);
        let mut senders = Vec::with_capacity(lanes);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..lanes {
            let (tx, mut rx) = mpsc::channel::<(
                lapin::message::Delivery,
                ssak3_proto::events::v1::Event,
            )>(usize::from(config.prefetch.max(1)));
            senders.push(tx);
            let consumer = consumer.clone();
            let config = config.clone();
            let (exchange, queue) = (self.inner.names.exchange(), queue.clone());
            workers.spawn(async move {
                while let Some((delivery, event)) = rx.recv().await {
                    let attempt = delivery_count(&delivery.properties) + 1;
                    let trace_context: crate::telemetry::Carrier =
                        ["traceparent", "tracestate", "baggage"]
                            .into_iter()
                            .filter_map(|name| {
                                Some((name.to_owned(), header(&delivery.properties, name)?))
                            })
                            .collect();
                    let from = consumer::Delivery {
                        system: super::MESSAGING_RABBITMQ,
                        exchange: &exchange,
                        queue: &queue,
                        trace_context: &trace_context,
                    };
                    let verdict = consumer.judge(event, attempt, &config, &from).await;
                    settle(&delivery, verdict).await;
                }
            });
        }

        let outcome = loop {
            tokio::select! {
                _ = stop.changed() => if crate::server::stopping(stop) { break Ok(()) },
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => match consumer::decode(&delivery.data) {
                        Ok(event) => {
                            let lane = consumer::lane_of(&event.reservation_id, lanes);
                            if senders[lane].send((delivery, event)).await.is_err() {
                                break Err(anyhow::anyhow!("consumer lane stopped"));
                            }
                        }
                        Err(reason) => {
                            tracing::error!(%queue, %reason, "poison message dead-lettered");
                            consumer.poison();
                            settle(&delivery, Verdict::DeadLetter(reason)).await;
                        }
                    },
                    Some(Err(error)) => break Err(error.into()),
                    None => break Err(anyhow::anyhow!("the broker ended the consumer")),
                },
            }
        };
        // Let the lanes finish what they hold (their acks fail harmlessly if
        // the connection is gone), then close: the broker requeues the rest.
        drop(senders);
        while workers.join_next().await.is_some() {}
        let _ = channel.close(200, "stopping".into()).await;
        let _ = connection.close(200, "stopping".into()).await;
        outcome
    }

    /// Deletes this namespace's exchanges and queues (tests use a namespace each).
    pub async fn delete_topology(&self) -> anyhow::Result<()> {
        let (connection, channel) = self.connect("admin").await?;
        let names = &self.inner.names;
        for subscription in self.inner.topology.subscriptions() {
            let service = subscription.queue;
            for queue in [names.queue(service), names.dead_letter_queue(service)] {
                channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await?;
            }
        }
        for exchange in [names.exchange(), names.dead_letter_exchange()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        connection.close(200, "done".into()).await?;
        Ok(())
    }

    /// Messages waiting in `service`'s dead-letter queue.
    pub async fn dead_letter_count(&self, service: &str) -> anyhow::Result<u32> {
        self.message_count(self.inner.names.dead_letter_queue(service))
            .await
    }

    /// Messages ready in `service`'s queue (not counting those being handled).
    pub async fn queue_depth(&self, service: &str) -> anyhow::Result<u32> {
        self.message_count(self.inner.names.queue(service)).await
    }

    async fn message_count(&self, queue: String) -> anyhow::Result<u32> {
        let (connection, channel) = self.connect("admin").await?;
        let queue = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        connection.close(200, "done".into()).await?;
        Ok(queue.message_count())
    }
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// A text header of a message.
fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(value.to_string()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// Earlier deliveries of this message, as counted by the quorum queue.
fn delivery_count(properties: &BasicProperties) -> u32 {
    let value = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("x-delivery-count").cloned());
    let count = match value {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        Some(AMQPValue::ShortInt(n)) => i64::from(n),
        Some(AMQPValue::LongUInt(n)) => i64::from(n),
        _ => 0,
    };
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Acknowledges, requeues after a delay, or dead-letters one delivery.
async fn settle(delivery: &lapin::message::Delivery, verdict: Verdict) {
    let result = match verdict {
        Verdict::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Verdict::Retry(delay) => {
            tokio::time::sleep(delay).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Verdict::DeadLetter(_) => {
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: false,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(error) = result {
        // The channel is gone: the broker will redeliver, and the inbox absorbs it.
        tracing::debug!(%error, "could not settle a delivery");
    }
}
