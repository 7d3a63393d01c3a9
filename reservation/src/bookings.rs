//! The booking use cases: create (book and pay in one call), read, cancel,
//! and the cleaning company's side: list its jobs and complete one. They
//! orchestrate; the aggregate ([`Reservation`]) decides each move and the
//! repository stores it.
//!
//! Create stores the reservation as PENDING_PAYMENT under the customer's
//! unique request_id, asks payment to charge (idempotent per reservation),
//! then moves it to CONFIRMED or REJECTED. A retry with the same request_id
//! finds the stored reservation: a pending one is paid for again (payment
//! charges once), a settled one is returned as it is. When payment is down,
//! slow or the breaker is open, the caller gets UNAVAILABLE and the
//! reservation stays unestablished; the reconciler later rejects it and
//! cancels any payment that went through after all.

use std::time::Duration;

use ssak3_common::{db::StorageError, paging::Page, resilience::CallError, time};
use ssak3_proto::payment::v1 as payment_pb;

use crate::{
    companies::Companies,
    config::PriceList,
    domain::{
        Booking, CompanyId, CustomerId, PaymentId, Reason, RequestId, Reservation,
        ReservationError, ReservationId, ReservationState,
    },
    payment_client::PaymentClient,
    storage::{self, DecideError, Repository},
};

/// Why a booking use case failed. Each variant carries the ids involved, so
/// that the error boundary can log them.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("reservation {0} not found")]
    NotFound(ReservationId),
    #[error("request_id {0} was already used for a different booking")]
    IdempotencyConflict(RequestId),
    #[error("{0} is not a registered company")]
    UnknownCompany(CompanyId),
    #[error("payment declined: {reason}")]
    PaymentDeclined { id: ReservationId, reason: String },
    #[error("reservation was rejected: {reason}")]
    Rejected { id: ReservationId, reason: String },
    #[error("reservation {id} {refused}")]
    Refused {
        id: ReservationId,
        refused: ReservationError,
    },
    /// Payment could not be used; `cause` is for the log, not the caller.
    #[error("payment unavailable for reservation {id:?}: {cause}")]
    PaymentUnavailable {
        id: Option<ReservationId>,
        cause: String,
        retry_after: Duration,
    },
    /// Payment answered the charge with an error that is not the customer's.
    #[error("payment refused the charge of reservation {id}: {status:?}")]
    PaymentRefused {
        id: ReservationId,
        status: tonic::Status,
    },
    #[error("reservation {0} kept changing under concurrent writers")]
    Contended(ReservationId),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BookingError {
    fn decided(id: &ReservationId, error: DecideError) -> Self {
        match error {
            DecideError::Refused(ReservationError::NotFound) => Self::NotFound(id.clone()),
            DecideError::Refused(refused) => Self::Refused {
                id: id.clone(),
                refused,
            },
            DecideError::Contended | DecideError::Vanished => Self::Contended(id.clone()),
            DecideError::Storage(cause) => Self::Storage(cause),
        }
    }
}

/// Booking and reading reservations.
#[derive(Clone, Debug)]
pub struct Bookings {
    reservations: Repository,
    companies: Companies,
    payment: PaymentClient,
    prices: PriceList,
}

impl Bookings {
    pub fn new(
        reservations: Repository,
        companies: Companies,
        payment: PaymentClient,
        prices: PriceList,
    ) -> Self {
        Self {
            reservations,
            companies,
            payment,
            prices,
        }
    }

    /// Books and pays; returns the CONFIRMED reservation.
    pub async fn create(
        &self,
        customer: CustomerId,
        booking: Booking,
    ) -> Result<Reservation, BookingError> {
        if !self.companies.is_registered(&booking.company_id).await? {
            return Err(BookingError::UnknownCompany(booking.company_id));
        }
        let request_id = booking.request_id.clone();
        let reservation = if self.payment.is_open() {
            // Payment is known to be unavailable: answer a retry from what is
            // stored, and store nothing new.
            match self
                .reservations
                .find_by_request(&customer, &request_id)
                .await?
            {
                Some(stored) => stored,
                None => return Err(self.unavailable(None, "circuit open".into())),
            }
        } else {
            self.reservations
                .insert_or_find(Reservation::book(
                    customer,
                    booking.clone(),
                    &self.prices,
                    time::now(),
                ))
                .await?
        };
        if !reservation.matches(&booking) {
            return Err(BookingError::IdempotencyConflict(request_id));
        }
        match reservation.state {
            ReservationState::PendingPayment if self.payment.is_open() => {
                Err(self.unavailable(Some(reservation.reservation_id), "circuit open".into()))
            }
            ReservationState::PendingPayment => self.pay(reservation).await,
            ReservationState::Rejected => Err(rejected(reservation)),
            ReservationState::Confirmed
            | ReservationState::Cleaned
            | ReservationState::Cancelled => Ok(reservation),
        }
    }

    /// A customer's own reservation; others' look absent.
    pub async fn get(
        &self,
        customer: &CustomerId,
        id: &ReservationId,
    ) -> Result<Reservation, BookingError> {
        let reservation = self.find(id).await?;
        if &reservation.customer_id == customer {
            Ok(reservation)
        } else {
            Err(BookingError::NotFound(id.clone()))
        }
    }

    /// CONFIRMED → CANCELLED for its owner, announcing `reservation.cancelled`
    /// (payment refunds on it). Cancelling a cancelled reservation returns it.
    pub async fn cancel(
        &self,
        customer: &CustomerId,
        id: &ReservationId,
    ) -> Result<Reservation, BookingError> {
        let reservation = self.find(id).await?;
        self.reservations
            .decide(reservation, |r, now| r.cancel(customer, now))
            .await
            .map_err(|e| BookingError::decided(id, e))
    }

    /// CONFIRMED → CLEANED for the company it was booked with, announcing
    /// `cleaning.completed`. Completing a cleaned job returns it.
    pub async fn complete(
        &self,
        company: &CompanyId,
        id: &ReservationId,
    ) -> Result<Reservation, BookingError> {
        let reservation = self.find(id).await?;
        self.reservations
            .decide(reservation, |r, now| r.complete(company, now))
            .await
            .map_err(|e| BookingError::decided(id, e))
    }

    /// The jobs booked with `company`, by scheduled time.
    pub async fn list_jobs(
        &self,
        company: &CompanyId,
        page: Page,
    ) -> Result<(Vec<Reservation>, String), BookingError> {
        let company = company.clone();
        let query = page.clone();
        let mut jobs = self
            .reservations
            .database()
            .read(move |c| {
                storage::list_jobs(c, &company, query.after.as_ref(), query.fetch_limit())
            })
            .await?;
        let next = page.finish(&mut jobs, |job| {
            (job.scheduled_at, job.reservation_id.as_str().to_owned())
        });
        Ok((jobs, next))
    }

    async fn pay(&self, reservation: Reservation) -> Result<Reservation, BookingError> {
        let id = reservation.reservation_id.clone();
        let payment = match self.payment.approve(&reservation).await {
            Ok(payment) => payment,
            Err(CallError::Unavailable(cause)) => return Err(self.unavailable(Some(id), cause)),
            Err(CallError::Rejected(status)) => {
                return Err(BookingError::PaymentRefused { id, status });
            }
        };
        match payment_pb::PaymentState::try_from(payment.state) {
            Ok(payment_pb::PaymentState::Approved) => {
                let payment_id = PaymentId::parse(&payment.payment_id).map_err(|invalid| {
                    BookingError::PaymentRefused {
                        id: id.clone(),
                        status: tonic::Status::internal(invalid.to_string()),
                    }
                })?;
                // A racing retry may have confirmed it already, or the
                // reconciler rejected it (and cancels the payment).
                match self
                    .reservations
                    .decide(reservation, |r, now| r.confirm(payment_id.clone(), now))
                    .await
                {
                    Ok(confirmed) => Ok(confirmed),
                    Err(DecideError::Refused(ReservationError::WrongState { .. })) => {
                        let current = self.find(&id).await?;
                        if current.is_established() {
                            Ok(current)
                        } else {
                            Err(rejected(current))
                        }
                    }
                    Err(other) => Err(BookingError::decided(&id, other)),
                }
            }
            Ok(payment_pb::PaymentState::Declined | payment_pb::PaymentState::Cancelled) => {
                let reason = if payment.decline_reason.is_empty() {
                    "payment was cancelled".to_owned()
                } else {
                    payment.decline_reason
                };
                let declined = Reason::Declined(reason.clone());
                self.reservations
                    .decide(reservation, |r, now| r.reject(&declined, now))
                    .await
                    .map_err(|e| BookingError::decided(&id, e))?;
                Err(BookingError::PaymentDeclined { id, reason })
            }
            Ok(payment_pb::PaymentState::Unspecified) | Err(_) => {
                Err(self.unavailable(Some(id), "payment outcome not settled yet".into()))
            }
        }
    }

    fn unavailable(&self, id: Option<ReservationId>, cause: String) -> BookingError {
        BookingError::PaymentUnavailable {
            id,
            cause,
            retry_after: self.payment.retry_after(),
        }
    }

    async fn find(&self, id: &ReservationId) -> Result<Reservation, BookingError> {
        self.reservations
            .find(id)
            .await?
            .ok_or_else(|| BookingError::NotFound(id.clone()))
    }
}

/// The error for a booking that ended REJECTED (or moved on otherwise).
fn rejected(reservation: Reservation) -> BookingError {
    BookingError::Rejected {
        reason: reservation
            .rejection_reason
            .unwrap_or_else(|| format!("it is {}", reservation.state.as_str())),
        id: reservation.reservation_id,
    }
}
