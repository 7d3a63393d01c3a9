//! The reservation service's client of the payment service.
//!
//! ApprovePayment goes through the resilient stack (deadline, circuit
//! breaker, concurrency limit with load shedding; see
//! `ssak3_common::resilience`). CancelPayment, used only by the reconciler,
//! has a deadline but no breaker: it is retried on the next round anyway.
//! Calls carry a short-lived token of the `service` role signed with the
//! shared key.

use std::time::Duration;

use ssak3_common::{
    auth::{self, JwtKeys, Role, SERVICE_ROLE_TTL},
    config::PaymentClientConfig,
    resilience::{CallError, CallPolicy, ResilientCall},
    telemetry, time,
};
use ssak3_proto::payment::v1::{self as pb, payment_service_client::PaymentServiceClient};
use tonic::{Request, Status, transport::Channel};
use tracing::Instrument as _;

use crate::domain::Reservation;

/// The subject of the reservation service's own tokens.
pub const SERVICE_SUBJECT: &str = "reservation";

/// Calls the payment service.
#[derive(Clone, Debug)]
pub struct PaymentClient {
    approve: ResilientCall<pb::ApprovePaymentRequest, pb::Payment>,
    client: PaymentServiceClient<Channel>,
    keys: JwtKeys,
    timeout: Duration,
    retry_after: Duration,
}

impl PaymentClient {
    /// A client of the payment service at `endpoint` (connects lazily).
    pub fn new(
        endpoint: &str,
        config: &PaymentClientConfig,
        keys: JwtKeys,
    ) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| anyhow::anyhow!("payment endpoint `{endpoint}` is not a URL: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = PaymentServiceClient::new(channel);
        let timeout = Duration::from_millis(config.timeout_ms);

        let call_client = client.clone();
        let call_keys = keys.clone();
        let approve_call = tower::service_fn(move |message: pb::ApprovePaymentRequest| {
            let mut client = call_client.clone();
            let request = service_request(&call_keys, message, timeout);
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
            keys,
            timeout,
            retry_after: Duration::from_millis(config.retry_after_ms),
        })
    }

    /// Asks payment to charge for `reservation`.
    pub async fn approve(&self, reservation: &Reservation) -> Result<pb::Payment, CallError> {
        let span = tracing::info_span!(
            "rpc",
            otel.name = "ssak3.payment.v1.PaymentService/ApprovePayment",
            otel.kind = "client",
            rpc.system = "grpc",
        );
        self.approve
            .call(pb::ApprovePaymentRequest {
                reservation_id: reservation.reservation_id.as_str().to_owned(),
                amount: Some(pb::Money {
                    currency_code: reservation.price.currency_code.clone(),
                    units: reservation.price.units,
                }),
                customer_id: reservation.customer_id.clone(),
                cleaner_id: reservation.cleaner_id.as_str().to_owned(),
                address: reservation.address.as_str().to_owned(),
                scheduled_at: Some(time::to_timestamp(reservation.scheduled_at)),
            })
            .instrument(span)
            .await
    }

    /// Cancels (refunds) the payment of a reservation, if any went through.
    pub async fn cancel(&self, reservation_id: &str, reason: &str) -> Result<pb::Payment, Status> {
        let request = service_request(
            &self.keys,
            pb::CancelPaymentRequest {
                reservation_id: reservation_id.to_owned(),
                reason: reason.to_owned(),
            },
            self.timeout,
        )?;
        let response = self.client.clone().cancel_payment(request).await?;
        Ok(response.into_inner())
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
fn service_request<T>(keys: &JwtKeys, message: T, timeout: Duration) -> Result<Request<T>, Status> {
    let token = keys
        .issue(SERVICE_SUBJECT, Role::Service, SERVICE_ROLE_TTL)
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut request = auth::with_bearer(Request::new(message), &token)?;
    request.set_timeout(timeout);
    // The trace goes on in payment.
    if let Some(traceparent) = telemetry::traceparent().and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("traceparent", traceparent);
    }
    Ok(request)
}
