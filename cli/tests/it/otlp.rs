//! Traces as a collector receives them: `ssak3 up` over PostgreSQL and
//! RabbitMQ exports to an OTLP receiver in the test, and what arrives names
//! each service as itself, links the spans of a booking across gRPC and the
//! broker, and carries the semantic conventions' keys.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use ssak3_common::{
    auth::{Role, signing::DevelopmentKeys},
    server::free_consecutive_ports,
    test_support::{TestBroker, eventually_within},
    time,
};
use ssak3_proto::reservation::v1::{
    self as reservation, reservation_service_client::ReservationServiceClient,
};

use crate::{
    system::{COMPANY, CUSTOMER, topology},
    up::{Up, dev_token, drop_databases, signed},
};

/// A span as received, with the resource it came under.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    resource: HashMap<String, String>,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        text(&self.span.attributes).remove(key)
    }
}

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// An OTLP/gRPC trace receiver that keeps what it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| text(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    kept.push(Received {
                        service: service.clone(),
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn of_trace(&self, trace_id: &[u8]) -> Vec<Received> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span of `kind` that `name` (an RPC) or routing key `key` names,
/// in `service`.
fn one<'a>(spans: &'a [Received], service: &str, kind: SpanKind, what: &str) -> &'a Received {
    let found: Vec<&Received> = spans
        .iter()
        .filter(|r| r.service == service && r.span.kind == kind as i32)
        .filter(|r| {
            r.span.name == what
                || r.attribute("messaging.rabbitmq.destination.routing_key")
                    .as_deref()
                    == Some(what)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{service} {kind:?} {what}: {:#?}",
        spans
            .iter()
            .map(|r| format!("{} {} {:?}", r.service, r.span.name, r.span.kind))
            .collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_sees_each_service_as_itself_and_one_trace_across_them() {
    let _shared = crate::system::BROKER.read().await;
    let receiver = Receiver::default();
    let otlp = receiver.clone().start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_consecutive_ports(4).expect("free consecutive ports");
    let run = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("ssak3_otlp_{}", &run[..8]);
    let database_url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let amqp_url = ssak3_common::test_support::amqp_url();
    let service_key = ssak3_common::auth::signing::Signer::generate_pem().expect("a key");
    let service_keys = ssak3_common::auth::signing::Signer::from_pem(&service_key, "reservation:")
        .expect("a signer")
        .jwks_json();
    let broker = TestBroker::new(topology());
    let endpoint = format!("http://{otlp}");
    let up = Up::start_with(
        dir.path(),
        base,
        &["--database-url", &database_url, "--amqp-url", &amqp_url],
        &[
            ("SSAK3_AUTH__SERVICE_KEY", service_key.as_str()),
            ("SSAK3_AUTH__SERVICE_KEYS", service_keys.as_str()),
            ("SSAK3_EVENTS__NAMESPACE", &broker.config.namespace),
            ("SSAK3_DATABASE_POOL_SIZE", "2"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=ssak3-test"),
            ("SSAK3_DEPLOYMENT_ENVIRONMENT", "test"),
        ],
    )
    .await;
    let keys = DevelopmentKeys::load_or_create(&dir.path().join("data")).expect("development keys");
    let customer = dev_token(&keys, CUSTOMER, Role::Customer, Duration::from_secs(600));
    let trace_id: Vec<u8> = (0..16).map(|_| fastrand::u8(..)).collect();
    let caller_span: Vec<u8> = (0..8).map(|_| fastrand::u8(..)).collect();
    let mut request = signed(
        &customer,
        reservation::CreateReservationRequest {
            request_id: run.clone(),
            cleaner_id: COMPANY.into(),
            address: "1 Sejong-daero, Seoul".into(),
            scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(3))),
            service_type: reservation::ServiceType::Standard as i32,
            note: String::new(),
        },
    );
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span));
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("parse"));
    request
        .metadata_mut()
        .insert("tracestate", "caller=opaque-2".parse().expect("parse"));
    ReservationServiceClient::connect(format!("http://{}", up.addr(0)))
        .await
        .expect("connecting to reservation")
        .create_reservation(request)
        .await
        .expect("booking");

    let spans = eventually_within(Duration::from_secs(30), "the booking's spans", || async {
        let spans = receiver.of_trace(&trace_id);
        // Each service exports on its own schedule: wait for all of them.
        let count = |service: &str, kind: SpanKind| {
            spans
                .iter()
                .filter(|r| r.service == service && r.span.kind == kind as i32)
                .count()
        };
        let consumers = spans
            .iter()
            .filter(|r| r.span.kind == SpanKind::Consumer as i32)
            .count();
        let all_in = consumers >= 2
            && count("ssak3-reservation", SpanKind::Server) >= 1
            && count("ssak3-reservation", SpanKind::Client) >= 1
            && count("ssak3-payment", SpanKind::Server) >= 1
            && count("ssak3-payment", SpanKind::Producer) >= 1;
        all_in.then_some(spans)
    })
    .await;
    up.interrupt();
    drop_databases(&database);

    let create = one(
        &spans,
        "ssak3-reservation",
        SpanKind::Server,
        "ssak3.reservation.v1.ReservationService/CreateReservation",
    );
    assert_eq!(create.span.parent_span_id, caller_span);
    let approve = "ssak3.payment.internal.v1.InternalPaymentService/ApprovePayment";
    let client = one(&spans, "ssak3-reservation", SpanKind::Client, approve);
    assert_eq!(client.span.parent_span_id, create.span.span_id);
    let server = one(&spans, "ssak3-payment", SpanKind::Server, approve);
    assert_eq!(server.span.parent_span_id, client.span.span_id);
    let publish = one(
        &spans,
        "ssak3-payment",
        SpanKind::Producer,
        "payment.approved",
    );
    assert_eq!(publish.span.parent_span_id, server.span.span_id);
    for service in ["ssak3-notify", "ssak3-mypage"] {
        let process = one(&spans, service, SpanKind::Consumer, "payment.approved");
        assert_eq!(
            process.span.parent_span_id, publish.span.span_id,
            "{service}"
        );
        assert_eq!(
            process.attribute("messaging.system").as_deref(),
            Some("rabbitmq")
        );
        assert_eq!(
            process.attribute("messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(process.span.trace_state, "caller=opaque-2", "{service}");
    }

    // The semantic conventions' keys.
    for (span, expected) in [
        (
            create,
            &[
                ("rpc.system", "grpc"),
                ("rpc.service", "ssak3.reservation.v1.ReservationService"),
                ("rpc.method", "CreateReservation"),
                ("rpc.grpc.status_code", "0"),
            ][..],
        ),
        (
            client,
            &[
                ("rpc.system", "grpc"),
                ("rpc.method", "ApprovePayment"),
                ("rpc.grpc.status_code", "0"),
                ("server.address", "127.0.0.1"),
            ][..],
        ),
        (
            publish,
            &[
                ("messaging.system", "rabbitmq"),
                ("messaging.operation.type", "send"),
                (
                    "messaging.rabbitmq.destination.routing_key",
                    "payment.approved",
                ),
                (
                    "messaging.destination.name",
                    &format!("{}.events", broker.config.namespace),
                ),
            ][..],
        ),
    ] {
        for (key, value) in expected {
            assert_eq!(
                span.attribute(key).as_deref(),
                Some(*value),
                "{key} of {}",
                span.span.name
            );
        }
    }

    // Each service's resource.
    let mut instances = std::collections::HashSet::new();
    for received in &spans {
        let resource = &received.resource;
        assert_eq!(
            resource.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            resource
                .get("deployment.environment.name")
                .map(String::as_str),
            Some("test")
        );
        assert_eq!(
            resource.get("service.namespace").map(String::as_str),
            Some("ssak3-test")
        );
        instances.insert((
            received.service.clone(),
            resource
                .get("service.instance.id")
                .cloned()
                .expect("an instance id"),
        ));
    }
    let services: std::collections::BTreeSet<&str> =
        instances.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "ssak3-mypage",
            "ssak3-notify",
            "ssak3-payment",
            "ssak3-reservation"
        ]
    );
    // One instance per service.
    assert_eq!(instances.len(), 4, "{instances:?}");
}
