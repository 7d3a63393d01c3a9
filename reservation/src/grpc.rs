//! `ssak3.reservation.v1`: request parsing (into domain values or
//! INVALID_ARGUMENT naming the field), roles, proto ↔ domain conversion, and
//! the service's one error boundary: [`BookingError`] → [`ApiError`].

use ssak3_common::{ApiError, auth, paging::Page, ratelimit::WriteLimiter, time};
use ssak3_proto::reservation::v1::{
    self as pb, cleaning_service_server, company_service_server, reservation_service_server,
};
use tonic::{Request, Response, Status};

use crate::{
    bookings::{BookingError, Bookings},
    companies::{Companies, Company, RegistryError, parse_display_name},
    domain::{
        Address, Booking, CompanyId, Note, RequestId, Reservation, ReservationId, ReservationState,
        ScheduledAt, ServiceType,
    },
};

impl From<BookingError> for ApiError {
    fn from(error: BookingError) -> Self {
        let message = error.to_string();
        match error {
            BookingError::NotFound(_) => ApiError::NotFound(message),
            BookingError::IdempotencyConflict(_) => ApiError::AlreadyExists(message),
            BookingError::UnknownCompany(_) => {
                ApiError::invalid("cleaner_id", "is not a registered company")
            }
            BookingError::PaymentDeclined { .. }
            | BookingError::Rejected { .. }
            | BookingError::Refused { .. } => ApiError::FailedPrecondition(message),
            BookingError::PaymentUnavailable {
                id,
                cause,
                retry_after,
            } => {
                // The cause (a transport error, "circuit open") is for operators.
                tracing::warn!(reservation_id = ?id.as_ref().map(ReservationId::as_str), %cause,
                    "payment unavailable");
                ApiError::Unavailable {
                    message: "payment is unavailable; pay again shortly".into(),
                    retry_after,
                }
            }
            BookingError::Contended(_) => ApiError::Aborted(message),
            BookingError::Storage(cause) => cause.into(),
            BookingError::PaymentRefused { .. } => ApiError::Internal(error.into()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::Conflict(_) => ApiError::AlreadyExists(error.to_string()),
            RegistryError::Storage(cause) => cause.into(),
        }
    }
}

/// CompanyService: operators register the companies customers may book.
#[derive(Debug)]
pub struct CompanyApi {
    companies: Companies,
    limiter: WriteLimiter,
}

impl CompanyApi {
    pub fn new(companies: Companies, limiter: WriteLimiter) -> Self {
        Self { companies, limiter }
    }
}

#[tonic::async_trait]
impl company_service_server::CompanyService for CompanyApi {
    async fn register_company(
        &self,
        request: Request<pb::RegisterCompanyRequest>,
    ) -> Result<Response<pb::Company>, Status> {
        let caller = auth::caller(&request)?;
        caller.require(auth::Role::Operator)?;
        self.limiter.check(&caller)?;
        let request = request.into_inner();
        let company_id = CompanyId::parse_field("company_id", &request.company_id)?;
        let display_name = parse_display_name(&request.display_name)?;
        let company = self
            .companies
            .register(company_id, display_name)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(company_to_proto(&company)))
    }
}

fn company_to_proto(company: &Company) -> pb::Company {
    pb::Company {
        company_id: company.company_id.as_str().to_owned(),
        display_name: company.display_name.clone(),
        create_time: Some(time::to_timestamp(company.create_time)),
    }
}

/// ReservationService over [`Bookings`].
#[derive(Debug)]
pub struct ReservationApi {
    bookings: Bookings,
    limiter: WriteLimiter,
}

impl ReservationApi {
    pub fn new(bookings: Bookings, limiter: WriteLimiter) -> Self {
        Self { bookings, limiter }
    }
}

#[tonic::async_trait]
impl reservation_service_server::ReservationService for ReservationApi {
    async fn create_reservation(
        &self,
        request: Request<pb::CreateReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = auth::caller(&request)?;
        let customer = caller.customer()?;
        self.limiter.check(&caller)?;
        let booking = parse_booking(request.into_inner())?;
        let reservation = self
            .bookings
            .create(customer, booking)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&reservation)))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let customer = auth::caller(&request)?.customer()?;
        let id =
            ReservationId::parse(&request.into_inner().reservation_id).map_err(ApiError::from)?;
        let reservation = self
            .bookings
            .get(&customer, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&reservation)))
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = auth::caller(&request)?;
        let customer = caller.customer()?;
        self.limiter.check(&caller)?;
        let id =
            ReservationId::parse(&request.into_inner().reservation_id).map_err(ApiError::from)?;
        let reservation = self
            .bookings
            .cancel(&customer, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&reservation)))
    }
}

/// CleaningService: the cleaning companies' side.
#[derive(Debug)]
pub struct CleaningApi {
    bookings: Bookings,
    limiter: WriteLimiter,
}

impl CleaningApi {
    pub fn new(bookings: Bookings, limiter: WriteLimiter) -> Self {
        Self { bookings, limiter }
    }
}

#[tonic::async_trait]
impl cleaning_service_server::CleaningService for CleaningApi {
    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let company = auth::caller(&request)?.company()?;
        let request = request.into_inner();
        let page = Page::parse(request.page_size, &request.page_token)?;
        let (jobs, next_page_token) = self
            .bookings
            .list_jobs(&company, page)
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
        let caller = auth::caller(&request)?;
        let company = caller.company()?;
        self.limiter.check(&caller)?;
        let id =
            ReservationId::parse(&request.into_inner().reservation_id).map_err(ApiError::from)?;
        let job = self
            .bookings
            .complete(&company, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(to_proto(&job)))
    }
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
        request_id: RequestId::parse(&request.request_id)?,
        company_id: CompanyId::parse(&request.cleaner_id)?,
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
        customer_id: r.customer_id.as_str().to_owned(),
        cleaner_id: r.company_id.as_str().to_owned(),
        address: r.address.as_str().to_owned(),
        scheduled_at: Some(time::to_timestamp(r.scheduled_at)),
        service_type: service_type as i32,
        price: Some((&r.price).into()),
        state: state as i32,
        payment_id: r
            .payment_id
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        create_time: Some(time::to_timestamp(r.create_time)),
        update_time: Some(time::to_timestamp(r.update_time)),
        note: r.note.as_str().to_owned(),
    }
}
