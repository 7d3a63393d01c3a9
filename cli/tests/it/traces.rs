//! One trace per reservation: a booking and its cancellation, sent with the
//! caller's trace context, leave spans in all four services, linked parent
//! to child across gRPC and the RabbitMQ hops.

use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::SpanData;
use ssak3_common::{auth::Role, test_support};
use ssak3_proto::{mypage::v1::ReservationStatus, reservation::v1 as reservation};

use crate::system::{COMPANY, CUSTOMER, System, Transport, as_user, eventually};

fn hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

/// `message` as `customer`, carrying the caller's span `span_id` of trace `trace_id`.
fn traced<T>(message: T, trace_id: &str, span_id: &str) -> tonic::Request<T> {
    let mut request = as_user(CUSTOMER, Role::Customer, message);
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    let metadata = request.metadata_mut();
    metadata.insert("traceparent", traceparent.parse().expect("parse"));
    metadata.insert("tracestate", TRACESTATE.parse().expect("parse"));
    metadata.insert("baggage", "tenant=acme".parse().expect("parse"));
    request
}

/// The caller's vendor state, which every hop must carry on.
const TRACESTATE: &str = "caller=opaque-1";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// What a span is, for finding it: an RPC by its name, an event by its routing key.
fn what(span: &SpanData) -> String {
    match attribute(span, "messaging.rabbitmq.destination.routing_key") {
        Some(key) if span.span_kind == SpanKind::Producer => format!("{key} publish"),
        Some(key) => format!("{key} process"),
        None => span.name.to_string(),
    }
}

/// The one span that is `name` (an RPC, or `<routing key> publish|process`;
/// of `kind`, and for `consumer` if given) among `spans`.
fn one<'a>(
    spans: &'a [SpanData],
    name: &str,
    kind: SpanKind,
    consumer: Option<&str>,
) -> &'a SpanData {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| what(s) == name && s.span_kind == kind)
        .filter(|s| {
            consumer
                .is_none_or(|c| attribute(s, "messaging.consumer.group.name").as_deref() == Some(c))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name} {kind:?} {consumer:?}: {:#?}",
        names(spans)
    );
    found[0]
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} ({:?}) parent {}",
                what(s),
                s.span_kind,
                s.parent_span_id
            )
        })
        .collect()
}

/// A queue of the test's own, bound to every event on the system's exchange.
struct Tap {
    _connection: lapin::Connection,
    consumer: lapin::Consumer,
}

impl Tap {
    async fn bind(system: &System) -> Self {
        use lapin::{options::*, types::FieldTable};
        let namespace = &system.broker.as_ref().expect("RabbitMQ").config.namespace;
        let connection = lapin::Connection::connect(
            &test_support::amqp_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("a broker connection");
        let channel = connection.create_channel().await.expect("a channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("a queue");
        channel
            .queue_bind(
                queue.name().clone(),
                format!("{namespace}.events").into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bound");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming");
        Self {
            _connection: connection,
            consumer,
        }
    }

    /// The string headers of the first message routed with `key`.
    async fn headers_of(&self, key: &str) -> std::collections::HashMap<String, String> {
        use futures_util::StreamExt as _;
        let mut consumer = self.consumer.clone();
        loop {
            let delivery =
                tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
                    .await
                    .expect("an event on the tap")
                    .expect("a delivery")
                    .expect("a message");
            if delivery.routing_key.as_str() != key {
                continue;
            }
            return delivery
                .properties
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .filter_map(|(k, v)| match v {
                            lapin::types::AMQPValue::LongString(s) => {
                                Some((k.to_string(), s.to_string()))
                            }
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
    }
}

fn span_id(span: &SpanData) -> SpanId {
    span.span_context.span_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_and_its_cancellation_are_one_trace_across_all_services() {
    let exporter = test_support::spans();
    let system = System::start(Transport::Rabbit).await;
    let tap = Tap::bind(&system).await;
    let trace_id = hex(16);
    let (book_span, cancel_span) = (hex(8), hex(8));

    let booked = system
        .reservations()
        .await
        .create_reservation(traced(
            reservation::CreateReservationRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                cleaner_id: COMPANY.into(),
                address: "12 Gangnam-daero, Seoul".into(),
                scheduled_at: Some(ssak3_common::time::to_timestamp(
                    ssak3_common::time::now() + chrono::TimeDelta::days(2),
                )),
                service_type: reservation::ServiceType::Standard as i32,
                note: String::new(),
            },
            &trace_id,
            &book_span,
        ))
        .await
        .expect("booking")
        .into_inner();
    let id = booked.reservation_id;
    eventually("my page to show PAID", || async {
        system
            .view(CUSTOMER, Role::Customer, &id)
            .await
            .filter(|v| v.status() == ReservationStatus::Paid)
    })
    .await;
    system
        .reservations()
        .await
        .cancel_reservation(traced(
            reservation::CancelReservationRequest {
                reservation_id: id.clone(),
            },
            &trace_id,
            &cancel_span,
        ))
        .await
        .expect("cancelling");

    // Every hop has ended once the last consumers are done.
    let expected_names = [
        "ssak3.reservation.v1.ReservationService/CreateReservation",
        "ssak3.payment.internal.v1.InternalPaymentService/ApprovePayment",
        "payment.approved publish",
        "payment.approved process",
        "ssak3.reservation.v1.ReservationService/CancelReservation",
        "reservation.cancelled publish",
        "reservation.cancelled process",
        "payment.cancelled publish",
        "payment.cancelled process",
    ];
    let spans = eventually("every span of the trace", || async {
        let spans: Vec<SpanData> = exporter
            .get_finished_spans()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.span_context.trace_id().to_string() == trace_id)
            .collect();
        let consumers = spans
            .iter()
            .filter(|s| s.span_kind == SpanKind::Consumer)
            .count();
        (expected_names
            .iter()
            .all(|n| spans.iter().any(|s| what(s) == *n))
            && consumers >= 6)
            .then_some(spans)
    })
    .await;

    // The event carried the caller's tracestate and baggage in its AMQP headers.
    let headers = tap.headers_of("payment.approved").await;
    assert_eq!(
        headers.get("tracestate").map(String::as_str),
        Some(TRACESTATE)
    );
    assert_eq!(
        headers.get("baggage").map(String::as_str),
        Some("tenant=acme")
    );
    assert!(
        headers
            .get("traceparent")
            .is_some_and(|t| t.contains(&trace_id)),
        "{headers:?}"
    );

    // The caller's tracestate went everywhere the trace did.
    for span in &spans {
        assert_eq!(
            span.span_context.trace_state().header(),
            TRACESTATE,
            "{}",
            what(span)
        );
    }
    // The semantic conventions' keys.
    let create = one(&spans, expected_names[0], SpanKind::Server, None);
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "ssak3.reservation.v1.ReservationService"),
        ("rpc.method", "CreateReservation"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(attribute(create, key).as_deref(), Some(value), "{key}");
    }
    let approved = one(&spans, "payment.approved publish", SpanKind::Producer, None);
    assert_eq!(
        attribute(approved, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert!(
        attribute(approved, "messaging.destination.name").is_some_and(|d| d.ends_with(".events")),
        "the exchange is the destination"
    );

    // The booking: caller → reservation → (gRPC) → payment → (RabbitMQ) → notify, mypage.
    let create = one(&spans, expected_names[0], SpanKind::Server, None);
    assert_eq!(create.parent_span_id.to_string(), book_span);
    let approve_client = one(&spans, expected_names[1], SpanKind::Client, None);
    assert_eq!(approve_client.parent_span_id, span_id(create));
    let approve_server = one(&spans, expected_names[1], SpanKind::Server, None);
    assert_eq!(approve_server.parent_span_id, span_id(approve_client));
    let approved = one(&spans, "payment.approved publish", SpanKind::Producer, None);
    assert_eq!(approved.parent_span_id, span_id(approve_server));
    for consumer in ["notify", "mypage"] {
        let handled = one(
            &spans,
            "payment.approved process",
            SpanKind::Consumer,
            Some(consumer),
        );
        assert_eq!(handled.parent_span_id, span_id(approved), "{consumer}");
    }

    // The cancellation: caller → reservation → (RabbitMQ) → payment, mypage;
    // payment → (RabbitMQ) → notify, mypage.
    let cancel = one(&spans, expected_names[4], SpanKind::Server, None);
    assert_eq!(cancel.parent_span_id.to_string(), cancel_span);
    let cancelled = one(
        &spans,
        "reservation.cancelled publish",
        SpanKind::Producer,
        None,
    );
    assert_eq!(cancelled.parent_span_id, span_id(cancel));
    let refund = one(
        &spans,
        "reservation.cancelled process",
        SpanKind::Consumer,
        Some("payment"),
    );
    assert_eq!(refund.parent_span_id, span_id(cancelled));
    let page = one(
        &spans,
        "reservation.cancelled process",
        SpanKind::Consumer,
        Some("mypage"),
    );
    assert_eq!(page.parent_span_id, span_id(cancelled));
    let refunded = one(
        &spans,
        "payment.cancelled publish",
        SpanKind::Producer,
        None,
    );
    assert_eq!(refunded.parent_span_id, span_id(refund));
    for consumer in ["notify", "mypage"] {
        let handled = one(
            &spans,
            "payment.cancelled process",
            SpanKind::Consumer,
            Some(consumer),
        );
        assert_eq!(handled.parent_span_id, span_id(refunded), "{consumer}");
    }
    system.stop().await;
}
