//! `ssak3.payment.v1.PaymentService` (public) and
//! `ssak3.payment.internal.v1.InternalPaymentService` (service-only): who may
//! call what, proto ↔ domain conversion, and the service's one error boundary: [`PaymentsError`] →
//! [`ApiError`].

use ssak3_common::{
    ApiError,
    auth::{self, Role},
    ids::{CompanyId, CustomerId, Invalid, PaymentId, ReservationId},
    money::Money,
    text, time,
};
use ssak3_proto::payment::{
    internal::v1::{self as internal, internal_payment_service_server},
    v1::{self as pb, get_payment_request::Lookup},
};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    domain::{Order, Payment, PaymentState},
    payments::{Payments, PaymentsError},
};

/// The only service that charges, refunds and reads payments.
const RESERVATION: &str = "reservation";

/// The longest address accepted in a charge order (reservation's limit).
const MAX_ADDRESS_CHARS: usize = 300;

impl From<PaymentsError> for ApiError {
    fn from(error: PaymentsError) -> Self {
        match error {
            // The same answer whether the payment is missing or another
            // customer's, so that ids do not leak.
            PaymentsError::NotFound(_) => ApiError::NotFound("payment not found".into()),
            PaymentsError::Conflict(_) => ApiError::AlreadyExists(error.to_string()),
            PaymentsError::GatewayUnavailable {
                reservation_id,
                cause,
                retry_after,
            } => {
                tracing::warn!(reservation_id = %reservation_id, %cause, "payment gateway unavailable");
                ApiError::Unavailable {
                    message: "the payment gateway is unavailable; pay again shortly".into(),
                    retry_after,
                }
            }
            PaymentsError::Contended(_) => ApiError::Aborted(error.to_string()),
            PaymentsError::Storage(cause) => cause.into(),
        }
    }
}

/// The gRPC face of [`Payments`]: the public service and the service-only
/// one, one implementation.
#[derive(Clone, Debug)]
pub struct PaymentApi {
    payments: Payments,
}

impl PaymentApi {
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }

    /// ApprovePayment, served by both services: the service role only.
    async fn approve(
        &self,
        request: Request<pb::ApprovePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        auth::caller(&request)?.require_service(RESERVATION)?;
        let (reservation_id, order) = parse_order(request.into_inner())?;
        let payments = self.payments.clone();
        // Run to the end even if the caller gives up: a charge must not be
        // abandoned between the gateway and the database.
        let payment = tokio::spawn(
            async move { payments.approve(reservation_id, order).await }.in_current_span(),
        )
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&payment)))
    }
}

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentApi {
    /// Kept for callers of the public service (deprecated there); the same
    /// call as the service-only one, with the same rules.
    async fn approve_payment(
        &self,
        request: Request<pb::ApprovePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        self.approve(request).await
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let caller = auth::caller(&request)?;
        let reader = match caller.role {
            Role::Customer => Some(CustomerId::from(caller.subject.clone())),
            Role::Service => {
                caller.require_service(RESERVATION)?;
                None
            }
            Role::Cleaner | Role::Operator => {
                return Err(ApiError::PermissionDenied(
                    "payments are read by the paying customer or the reservation service".into(),
                )
                .into());
            }
        };
        let payment = match request.into_inner().lookup {
            Some(Lookup::PaymentId(id)) => {
                self.payments
                    .find_by_payment_id(&PaymentId::parse(&id).map_err(ApiError::from)?)
                    .await
            }
            Some(Lookup::ReservationId(id)) => {
                self.payments
                    .find_by_reservation_id(&ReservationId::parse(&id).map_err(ApiError::from)?)
                    .await
            }
            None => {
                return Err(ApiError::invalid("lookup", "set payment_id or reservation_id").into());
            }
        }
        .map_err(ApiError::from)?;
        // A customer sees only their own payments; others' look absent.
        if let Some(reader) = reader
            && payment.customer_id() != Some(&reader)
        {
            return Err(ApiError::from(PaymentsError::NotFound(String::new())).into());
        }
        Ok(Response::new(to_proto(&payment)))
    }
}

#[tonic::async_trait]
impl internal_payment_service_server::InternalPaymentService for PaymentApi {
    async fn approve_payment(
        &self,
        request: Request<pb::ApprovePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        self.approve(request).await
    }

    async fn cancel_payment(
        &self,
        request: Request<internal::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        auth::caller(&request)?.require_service(RESERVATION)?;
        let reservation_id =
            ReservationId::parse(&request.into_inner().reservation_id).map_err(ApiError::from)?;
        let payments = self.payments.clone();
        // Like approve: a refund must not be abandoned half-way.
        let payment =
            tokio::spawn(async move { payments.cancel(&reservation_id).await }.in_current_span())
                .await
                .map_err(|e| ApiError::Internal(e.into()))?
                .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&payment)))
    }
}

fn parse_order(request: pb::ApprovePaymentRequest) -> Result<(ReservationId, Order), Invalid> {
    let amount = request
        .amount
        .ok_or_else(|| Invalid::new("amount", "is required"))?;
    let amount = Money::parse("amount", &amount.currency_code, amount.units)?;
    let scheduled_at = request
        .scheduled_at
        .as_ref()
        .and_then(time::from_timestamp)
        .ok_or_else(|| Invalid::new("scheduled_at", "is required"))?;
    text::one_line("address", &request.address, MAX_ADDRESS_CHARS)?;
    Ok((
        ReservationId::parse(&request.reservation_id)?,
        Order {
            customer_id: CustomerId::parse(&request.customer_id)?,
            company_id: CompanyId::parse(&request.cleaner_id)?,
            address: request.address,
            scheduled_at,
            amount,
        },
    ))
}

/// The wire form of a payment. A PENDING payment has no settled state yet.
pub fn to_proto(payment: &Payment) -> pb::Payment {
    let state = match payment.state {
        PaymentState::Pending => pb::PaymentState::Unspecified,
        PaymentState::Approved => pb::PaymentState::Approved,
        PaymentState::Declined => pb::PaymentState::Declined,
        PaymentState::Cancelled => pb::PaymentState::Cancelled,
    };
    let order = payment.order.as_ref();
    pb::Payment {
        payment_id: payment.payment_id.as_str().to_owned(),
        reservation_id: payment.reservation_id.as_str().to_owned(),
        amount: order.map(|o| (&o.amount).into()),
        state: state as i32,
        create_time: Some(time::to_timestamp(payment.create_time)),
        update_time: Some(time::to_timestamp(payment.update_time)),
        customer_id: order
            .map(|o| o.customer_id.as_str().to_owned())
            .unwrap_or_default(),
        decline_reason: payment.decline_reason.clone().unwrap_or_default(),
    }
}
