//! The reservation service's client of the payment service's service-only
//! calls (`ssak3.payment.internal.v1.InternalPaymentService`).
//!
//! ApprovePayment goes through the resilient stack (deadline, circuit
//! breaker, concurrency limit with load shedding; see
//! `ssak3_common::resilience`). CancelPayment, used only by the reconciler,
//! has a deadline but no breaker: it is retried on the next round anyway.
//! Calls carry a short-lived token the reservation service signs with its
//! own key (audience: payment), which payment verifies against the public
//! keys it trusts for its callers.

use std::time::Duration;

use ssak3_common::{
    ApiError,
    auth::{self, ServiceIdentity},
    ids::ReservationId,
    resilience::{CallError, CallPolicy, ResilientCall, is_transport_failure},
    telemetry, time,
};
use ssak3_proto::payment::{
    internal::v1::{
        self as internal, internal_payment_service_client::InternalPaymentServiceClient,
    },
    v1 as pb,
};
use tonic::{Request, Status, transport::Channel};
use tracing::Instrument as _;

use crate::{config::PaymentClientConfig, domain::Reservation};

/// The audience of the calls' tokens.
const PAYMENT: &str = "payment";

/// Calls the payment service.
#[derive(Clone, Debug)]
pub struct PaymentClient {
    approve: ResilientCall<pb::ApprovePaymentRequest, pb::Payment>,
    client: InternalPaymentServiceClient<Channel>,
    identity: ServiceIdentity,
    timeout: Duration,
    retry_after: Duration,
    /// Payment's host and port, as client spans report them.
    server: (String, Option<u16>),
}

impl PaymentClient {
    /// A client of the payment service at `endpoint` (connects lazily).
    pub fn new(
        endpoint: &str,
        config: &PaymentClientConfig,
        identity: ServiceIdentity,
    ) -> anyhow::Result<Self> {
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| anyhow::anyhow!("payment endpoint `{endpoint}` is not a URL: {e}"))?;
        let server = (
            endpoint.uri().host().unwrap_or_default().to_owned(),
            endpoint.uri().port_u16(),
        );
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = InternalPaymentServiceClient::new(channel);
        let timeout = Duration::from_millis(config.timeout_ms);

        let call_client = client.clone();
        let call_identity = identity.clone();
        let approve_call = tower::service_fn(move |message: pb::ApprovePaymentRequest| {
            let mut client = call_client.clone();
            let request = service_request(&call_identity, message, timeout);
            async move {
                client
                    .approve_payment(request?)
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        let policy = CallPolicy {
            name: "payment",
            timeout,
            concurrency_limit: config.concurrency_limit,
            breaker: config.breaker.clone(),
        };
        let approve = ResilientCall::new(approve_call, &policy)
            .map_err(|e| anyhow::anyhow!("invalid payment client settings: {e}"))?;
        Ok(Self {
            approve,
            client,
            identity,
            timeout,
            retry_after: Duration::from_millis(config.retry_after_ms),
            server,
        })
    }

    /// Asks payment to charge for `reservation`.
    pub async fn approve(&self, reservation: &Reservation) -> Result<pb::Payment, CallError> {
        // The semantic conventions for gRPC clients.
        let span = tracing::info_span!(
            "rpc",
            otel.name = "ssak3.payment.internal.v1.InternalPaymentService/ApprovePayment",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.system.name = "grpc",
            rpc.service = "ssak3.payment.internal.v1.InternalPaymentService",
            rpc.method = "ApprovePayment",
            rpc.grpc.status_code = tracing::field::Empty,
            rpc.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            server.address = %self.server.0,
            server.port = self.server.1,
        );
        let outcome = self
            .approve
            .call(pb::ApprovePaymentRequest {
                reservation_id: reservation.reservation_id.as_str().to_owned(),
                amount: Some((&reservation.price).into()),
                customer_id: reservation.customer_id.as_str().to_owned(),
                cleaner_id: reservation.company_id.as_str().to_owned(),
                address: reservation.address.as_str().to_owned(),
                scheduled_at: Some(time::to_timestamp(reservation.scheduled_at)),
            })
            .instrument(span.clone())
            .await;
        let code = match &outcome {
            Ok(_) => tonic::Code::Ok,
            Err(CallError::Rejected(status)) => status.code(),
            Err(CallError::Unavailable(_)) => tonic::Code::Unavailable,
        };
        telemetry::record_rpc_status(&span, code, false);
        outcome
    }

    /// Cancels (refunds) the payment of a reservation, if any went through.
    pub async fn cancel(
        &self,
        reservation_id: &ReservationId,
        reason: &str,
    ) -> Result<(), CallError> {
        let request = service_request(
            &self.identity,
            internal::CancelPaymentRequest {
                reservation_id: reservation_id.as_str().to_owned(),
                reason: reason.to_owned(),
            },
            self.timeout,
        )
        .map_err(CallError::Rejected)?;
        match self.client.clone().cancel_payment(request).await {
            Ok(_) => Ok(()),
            Err(status) if is_transport_failure(&status) => {
                Err(CallError::Unavailable(status.message().to_owned()))
            }
            Err(status) => Err(CallError::Rejected(status)),
        }
    }

    /// True while the breaker rejects calls without trying payment.
    pub fn is_open(&self) -> bool {
        self.approve.is_open()
    }

    /// When callers should try again after payment was unavailable.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The breaker, for metrics and tests.
    pub fn breaker(&self) -> &ResilientCall<pb::ApprovePaymentRequest, pb::Payment> {
        &self.approve
    }
}

/// A request with a fresh service token and the deadline propagated as `grpc-timeout`.
fn service_request<T>(
    identity: &ServiceIdentity,
    message: T,
    timeout: Duration,
) -> Result<Request<T>, Status> {
    let token = identity
        .token_for(PAYMENT)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut request = auth::with_bearer(Request::new(message), &token)?;
    request.set_timeout(timeout);
    // The trace goes on in payment (with its tracestate and baggage).
    telemetry::inject_metadata(request.metadata_mut());
    Ok(request)
}
