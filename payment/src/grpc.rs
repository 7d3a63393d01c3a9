//! `ssak3.payment.v1.PaymentService`: who may call what, and proto ↔ domain conversion.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use ssak3_common::{
    ApiError,
    auth::{self, Role},
    time,
};
use ssak3_proto::payment::v1::{self as pb, get_payment_request::Lookup};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    domain::{ChargeOrder, Money, Payment, PaymentState},
    payments::Payments,
};

/// The longest id (reservation, customer, company) accepted.
const MAX_ID_LEN: usize = 64;
/// The most a single booking may cost, in minor units.
const MAX_AMOUNT_UNITS: i64 = 100_000_000;

/// Counts of calls received, for metrics and for tests that prove a call never arrived.
#[derive(Debug, Default)]
pub struct CallCounts {
    pub approve_payment: AtomicU64,
}

/// The gRPC face of [`Payments`].
#[derive(Debug)]
pub struct PaymentApi {
    payments: Payments,
    counts: Arc<CallCounts>,
}

impl PaymentApi {
    pub fn new(payments: Payments, counts: Arc<CallCounts>) -> Self {
        Self { payments, counts }
    }
}

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentApi {
    async fn approve_payment(
        &self,
        request: Request<pb::ApprovePaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        self.counts.approve_payment.fetch_add(1, Ordering::Relaxed);
        auth::caller(&request)?.require(Role::Service)?;
        let order = parse_order(request.into_inner())?;
        let payments = self.payments.clone();
        // Run to the end even if the caller gives up: a charge must not be
        // abandoned between the gateway and the database.
        let payment = tokio::spawn(async move { payments.approve(order).await }.in_current_span())
            .await
            .map_err(|e| ApiError::Internal(e.into()))?
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&payment)))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let caller = auth::caller(&request)?;
        if caller.role == Role::Cleaner {
            return Err(ApiError::PermissionDenied(
                "payments are read by the paying customer or a service".into(),
            )
            .into());
        }
        let payment = match request.into_inner().lookup {
            Some(Lookup::PaymentId(id)) => {
                self.payments
                    .find_by_payment_id(&parse_id("payment_id", &id)?)
                    .await
            }
            Some(Lookup::ReservationId(id)) => {
                self.payments
                    .find_by_reservation_id(&parse_id("reservation_id", &id)?)
                    .await
            }
            None => {
                return Err(ApiError::invalid("lookup", "set payment_id or reservation_id").into());
            }
        }
        .map_err(ApiError::from)?;
        // A customer sees only their own payments; others' look absent, so ids do not leak.
        if caller.role == Role::Customer && payment.customer_id != caller.subject {
            return Err(ApiError::NotFound("no such payment".into()).into());
        }
        Ok(Response::new(to_proto(&payment)))
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        auth::caller(&request)?.require(Role::Service)?;
        let reservation_id = parse_id("reservation_id", &request.into_inner().reservation_id)?;
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

fn parse_id(field: &'static str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ApiError::invalid(
            field,
            format!("is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    Ok(value.to_owned())
}

fn parse_order(request: pb::ApprovePaymentRequest) -> Result<ChargeOrder, ApiError> {
    let amount = request
        .amount
        .ok_or_else(|| ApiError::invalid("amount", "is required"))?;
    if amount.currency_code.len() != 3
        || !amount.currency_code.bytes().all(|b| b.is_ascii_uppercase())
    {
        return Err(ApiError::invalid(
            "amount.currency_code",
            "must be an ISO 4217 code such as KRW",
        ));
    }
    if !(1..=MAX_AMOUNT_UNITS).contains(&amount.units) {
        return Err(ApiError::invalid(
            "amount.units",
            format!("must be between 1 and {MAX_AMOUNT_UNITS}"),
        ));
    }
    let scheduled_at = request
        .scheduled_at
        .as_ref()
        .and_then(time::from_timestamp)
        .ok_or_else(|| ApiError::invalid("scheduled_at", "is required"))?;
    Ok(ChargeOrder {
        reservation_id: parse_id("reservation_id", &request.reservation_id)?,
        customer_id: parse_id("customer_id", &request.customer_id)?,
        cleaner_id: parse_id("cleaner_id", &request.cleaner_id)?,
        address: request.address,
        scheduled_at,
        amount: Money {
            currency_code: amount.currency_code,
            units: amount.units,
        },
    })
}

/// The wire form of a payment. A PENDING payment has no settled state yet.
pub fn to_proto(payment: &Payment) -> pb::Payment {
    let state = match payment.state {
        PaymentState::Pending => pb::PaymentState::Unspecified,
        PaymentState::Approved => pb::PaymentState::Approved,
        PaymentState::Declined => pb::PaymentState::Declined,
        PaymentState::Cancelled => pb::PaymentState::Cancelled,
    };
    pb::Payment {
        payment_id: payment.payment_id.clone(),
        reservation_id: payment.reservation_id.clone(),
        amount: Some(pb::Money {
            currency_code: payment.amount.currency_code.clone(),
            units: payment.amount.units,
        }),
        state: state as i32,
        create_time: Some(time::to_timestamp(payment.create_time)),
        update_time: Some(time::to_timestamp(payment.update_time)),
        customer_id: payment.customer_id.clone(),
        decline_reason: payment.decline_reason.clone().unwrap_or_default(),
    }
}
