//! `ssak3.reservation.v1`: request parsing (into domain values or
//! INVALID_ARGUMENT naming the field), roles, and proto ↔ domain conversion.

use ssak3_common::{
    ApiError,
    auth::{self, Role},
    paging::Page,
    time,
};
use ssak3_proto::reservation::v1::{
    self as pb, cleaning_service_server, reservation_service_server,
};
use tonic::{Request, Response, Status};

use crate::{
    bookings::Bookings,
    domain::{
        Address, Booking, CompanyId, IdempotencyKey, Invalid, Note, Reservation, ReservationId,
        ReservationState, ScheduledAt, ServiceType,
    },
};

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::InvalidArgument {
            field: invalid.field,
            reason: invalid.reason,
        }
    }
}

/// ReservationService over [`Bookings`].
#[derive(Debug)]
pub struct ReservationApi {
    bookings: Bookings,
}

impl ReservationApi {
    pub fn new(bookings: Bookings) -> Self {
        Self { bookings }
    }
}

#[tonic::async_trait]
impl reservation_service_server::ReservationService for ReservationApi {
    async fn create_reservation(
        &self,
        request: Request<pb::CreateReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = auth::caller(&request)?;
        caller.require(Role::Customer)?;
        let booking = parse_booking(request.into_inner())?;
        let reservation = self
            .bookings
            .create(&caller.subject, booking)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&reservation)))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let (caller, id) = caller_and_id(request, Role::Customer, |r| r.reservation_id)?;
        let reservation = self
            .bookings
            .get(&caller, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&reservation)))
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let (caller, id) = caller_and_id(request, Role::Customer, |r| r.reservation_id)?;
        let reservation = self
            .bookings
            .cancel(&caller.subject, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&reservation)))
    }
}

/// CleaningService: the cleaning companies' side.
#[derive(Debug)]
pub struct CleaningApi {
    bookings: Bookings,
}

impl CleaningApi {
    pub fn new(bookings: Bookings) -> Self {
        Self { bookings }
    }
}

#[tonic::async_trait]
impl cleaning_service_server::CleaningService for CleaningApi {
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = auth::caller(&request)?;
        caller.require(Role::Cleaner)?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (jobs, next_page_token) = self
            .bookings
            .list_jobs(&caller.subject, page)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn complete_cleaning(
        &self,
        request: Request<pb::CompleteCleaningRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let (caller, id) = caller_and_id(request, Role::Cleaner, |r| r.reservation_id)?;
        let job = self
            .bookings
            .complete(&caller.subject, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&job)))
    }
}

/// The caller, who must have `role`, and the reservation the request names.
fn caller_and_id<T>(
    request: Request<T>,
    role: Role,
    reservation_id: impl FnOnce(T) -> String,
) -> Result<(auth::Caller, ReservationId), Status> {
    let caller = auth::caller(&request)?;
    caller.require(role)?;
    let id = ReservationId::parse(&reservation_id(request.into_inner())).map_err(ApiError::from)?;
    Ok((caller, id))
}

/// Turns a request into a [`Booking`], or names the first invalid field.
fn parse_booking(request: pb::CreateReservationRequest) -> Result<Booking, ApiError> {
    let service_type = match pb::ServiceType::try_from(request.service_type) {
        Ok(pb::ServiceType::Standard) => ServiceType::Standard,
        Ok(pb::ServiceType::Deep) => ServiceType::Deep,
        Ok(pb::ServiceType::MoveOut) => ServiceType::MoveOut,
        Ok(pb::ServiceType::Unspecified) => {
            return Err(ApiError::invalid("service_type", "is required"));
        }
        Err(_) => {
            return Err(ApiError::invalid(
                "service_type",
                format!("{} is not a known service type", request.service_type),
            ));
        }
    };
    let scheduled_at = match &request.scheduled_at {
        None => None,
        Some(ts) => Some(
            time::from_timestamp(ts)
                .ok_or_else(|| ApiError::invalid("scheduled_at", "is out of range"))?,
        ),
    };
    Ok(Booking {
        request_id: IdempotencyKey::parse(&request.request_id)?,
        cleaner_id: CompanyId::parse(&request.cleaner_id)?,
        address: Address::parse(&request.address)?,
        scheduled_at: ScheduledAt::parse(scheduled_at, time::now())?,
        service_type,
        note: Note::parse(&request.note)?,
    })
}

/// The wire form of a reservation.
pub fn to_proto(r: &Reservation) -> pb::Reservation {
    let state = match r.state {
        ReservationState::PendingPayment => pb::ReservationState::PendingPayment,
        ReservationState::Confirmed => pb::ReservationState::Confirmed,
        ReservationState::Cleaned => pb::ReservationState::Cleaned,
        ReservationState::Cancelled => pb::ReservationState::Cancelled,
        ReservationState::Rejected => pb::ReservationState::Rejected,
    };
    let service_type = match r.service_type {
        ServiceType::Standard => pb::ServiceType::Standard,
        ServiceType::Deep => pb::ServiceType::Deep,
        ServiceType::MoveOut => pb::ServiceType::MoveOut,
    };
    pb::Reservation {
        reservation_id: r.reservation_id.as_str().to_owned(),
        customer_id: r.customer_id.clone(),
        cleaner_id: r.cleaner_id.as_str().to_owned(),
        address: r.address.as_str().to_owned(),
        scheduled_at: Some(time::to_timestamp(r.scheduled_at)),
        service_type: service_type as i32,
        price: Some(pb::Money {
            currency_code: r.price.currency_code.clone(),
            units: r.price.units,
        }),
        state: state as i32,
        payment_id: r.payment_id.clone().unwrap_or_default(),
        create_time: Some(time::to_timestamp(r.create_time)),
        update_time: Some(time::to_timestamp(r.update_time)),
        note: r.note.as_str().to_owned(),
    }
}
