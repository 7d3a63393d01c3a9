//! The booking use cases: create (book and pay in one call), read, cancel,
//! and the cleaning company's side: list its jobs and complete one.
//!
//! Create stores the reservation as PENDING_PAYMENT under the customer's
//! unique request_id, asks payment to charge (idempotent per reservation),
//! then moves it to CONFIRMED or REJECTED. A retry with the same request_id
//! finds the stored reservation: a pending one is paid for again (payment
//! charges once), a settled one is returned as it is. When payment is down,
//! slow or the breaker is open, the caller gets UNAVAILABLE and the
//! reservation stays unestablished; the reconciler later rejects it and
//! cancels any payment that went through after all.

use ssak3_common::{
    ApiError,
    auth::{Caller, Role},
    config::PriceList,
    db::{Database, StorageError},
    resilience::CallError,
    time,
};
use ssak3_common::{
    events::{self, outbox},
    paging::Page,
};
use ssak3_proto::{
    events::v1::{self as ev, Event, event::Payload},
    payment::v1 as payment_pb,
};

use crate::{
    domain::{Booking, Reservation, ReservationId, ReservationState},
    payment_client::PaymentClient,
    storage,
};

/// Why a booking use case failed.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("reservation {0} not found")]
    NotFound(String),
    #[error("request_id {0} was already used for a different booking")]
    IdempotencyConflict(String),
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    #[error("reservation was rejected: {0}")]
    Rejected(String),
    #[error("payment unavailable ({reason}); pay again shortly")]
    PaymentUnavailable {
        reason: String,
        retry_after: std::time::Duration,
    },
    #[error("reservation {id} is {state}; {allowed}")]
    WrongState {
        id: String,
        state: &'static str,
        allowed: &'static str,
    },
    #[error("payment service refused the charge: {0}")]
    PaymentRefused(tonic::Status),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<BookingError> for ApiError {
    fn from(error: BookingError) -> Self {
        match error {
            BookingError::NotFound(_) => ApiError::NotFound(error.to_string()),
            BookingError::IdempotencyConflict(_) => ApiError::AlreadyExists(error.to_string()),
            BookingError::PaymentDeclined(_)
            | BookingError::Rejected(_)
            | BookingError::WrongState { .. } => ApiError::FailedPrecondition(error.to_string()),
            BookingError::PaymentUnavailable { retry_after, .. } => ApiError::Unavailable {
                message: error.to_string(),
                retry_after,
            },
            BookingError::PaymentRefused(status) => {
                ApiError::Internal(anyhow::anyhow!("payment refused a charge: {status:?}"))
            }
            BookingError::Storage(cause) => ApiError::Internal(cause.into()),
        }
    }
}

/// Booking and reading reservations.
#[derive(Clone, Debug)]
pub struct Bookings {
    db: Database,
    payment: PaymentClient,
    prices: PriceList,
    events: outbox::Waker,
}

impl Bookings {
    pub fn new(
        db: Database,
        payment: PaymentClient,
        prices: PriceList,
        events: outbox::Waker,
    ) -> Self {
        Self {
            db,
            payment,
            prices,
            events,
        }
    }

    /// Books and pays; returns the CONFIRMED reservation.
    pub async fn create(
        &self,
        customer_id: &str,
        booking: Booking,
    ) -> Result<Reservation, BookingError> {
        // Fail fast, and store nothing, while payment is known to be unavailable.
        if self.payment.is_open() {
            return Err(self.unavailable("circuit open"));
        }
        let reservation = self
            .insert_or_find(Reservation::book(
                customer_id,
                booking.clone(),
                &self.prices,
                time::now(),
            ))
            .await?;
        if !reservation.matches(&booking) {
            return Err(BookingError::IdempotencyConflict(
                booking.request_id.as_str().to_owned(),
            ));
        }
        match reservation.state {
            ReservationState::PendingPayment => self.pay(reservation).await,
            ReservationState::Rejected => Err(BookingError::Rejected(
                reservation.rejection_reason.unwrap_or_default(),
            )),
            ReservationState::Confirmed
            | ReservationState::Cleaned
            | ReservationState::Cancelled => Ok(reservation),
        }
    }

    /// A customer's own reservation; others' look absent.
    pub async fn get(
        &self,
        caller: &Caller,
        id: &ReservationId,
    ) -> Result<Reservation, BookingError> {
        let reservation = self.find(id.as_str()).await?;
        let visible = match caller.role {
            Role::Customer => reservation.customer_id == caller.subject,
            Role::Cleaner | Role::Service => false,
        };
        if visible {
            Ok(reservation)
        } else {
            Err(BookingError::NotFound(id.as_str().to_owned()))
        }
    }

    /// CONFIRMED → CANCELLED for its owner, announcing `reservation.cancelled`
    /// (payment refunds on it). Cancelling a cancelled reservation returns it.
    pub async fn cancel(
        &self,
        customer_id: &str,
        id: &ReservationId,
    ) -> Result<Reservation, BookingError> {
        let reservation = self.find(id.as_str()).await?;
        if reservation.customer_id != customer_id {
            return Err(BookingError::NotFound(id.as_str().to_owned()));
        }
        let event = events::new_event(
            id.as_str(),
            Payload::ReservationCancelled(ev::ReservationCancelled {
                reservation_id: id.as_str().to_owned(),
                customer_id: reservation.customer_id.clone(),
                cleaner_id: reservation.cleaner_id.as_str().to_owned(),
                reason: "cancelled by the customer".into(),
            }),
        );
        self.finish(
            reservation,
            ReservationState::Cancelled,
            event,
            "only a CONFIRMED reservation can be cancelled",
        )
        .await
    }

    /// CONFIRMED → CLEANED for the company it was booked with, announcing
    /// `cleaning.completed`. Completing a cleaned job returns it.
    pub async fn complete(
        &self,
        company_id: &str,
        id: &ReservationId,
    ) -> Result<Reservation, BookingError> {
        let reservation = self.find(id.as_str()).await?;
        if reservation.cleaner_id.as_str() != company_id {
            return Err(BookingError::NotFound(id.as_str().to_owned()));
        }
        let event = events::new_event(
            id.as_str(),
            Payload::CleaningCompleted(ev::CleaningCompleted {
                reservation_id: id.as_str().to_owned(),
                customer_id: reservation.customer_id.clone(),
                cleaner_id: company_id.to_owned(),
                completed_at: Some(time::to_timestamp(time::now())),
            }),
        );
        self.finish(
            reservation,
            ReservationState::Cleaned,
            event,
            "only a CONFIRMED job can be completed",
        )
        .await
    }

    /// The jobs booked with `company_id`, by scheduled time.
    pub async fn list_jobs(
        &self,
        company_id: &str,
        page: Page,
    ) -> Result<(Vec<Reservation>, String), BookingError> {
        let company = company_id.to_owned();
        let query = page.clone();
        let mut jobs = self
            .db
            .read(move |c| {
                storage::list_jobs(c, &company, query.after.as_ref(), query.fetch_limit())
            })
            .await?;
        let next = page.finish(&mut jobs, |job| {
            (job.scheduled_at, job.reservation_id.as_str().to_owned())
        });
        Ok((jobs, next))
    }

    /// Moves a CONFIRMED reservation to `to` and records `event` in the same
    /// transaction. Already in `to` → returned as it is (a retried call);
    /// in any other state → WrongState.
    async fn finish(
        &self,
        reservation: Reservation,
        to: ReservationState,
        event: Event,
        allowed: &'static str,
    ) -> Result<Reservation, BookingError> {
        let id = reservation.reservation_id.as_str().to_owned();
        if reservation.state == ReservationState::Confirmed {
            let key = id.clone();
            let moved = self
                .db
                .transaction(move |c| {
                    let moved = storage::transition(c, &key, ReservationState::Confirmed, to)?;
                    if moved {
                        outbox::record(c, &event)?;
                    }
                    Ok(moved)
                })
                .await?;
            if moved {
                self.events.wake();
            }
        }
        // Re-read: a racing call may have moved it first.
        let current = self.find(&id).await?;
        if current.state == to {
            Ok(current)
        } else {
            Err(BookingError::WrongState {
                id,
                state: current.state.as_str(),
                allowed,
            })
        }
    }

    async fn pay(&self, reservation: Reservation) -> Result<Reservation, BookingError> {
        let id = reservation.reservation_id.as_str().to_owned();
        let payment = match self.payment.approve(&reservation).await {
            Ok(payment) => payment,
            Err(CallError::Unavailable(reason)) => return Err(self.unavailable(&reason)),
            Err(CallError::Rejected(status)) => return Err(BookingError::PaymentRefused(status)),
        };
        match payment_pb::PaymentState::try_from(payment.state) {
            Ok(payment_pb::PaymentState::Approved) => {
                let payment_id = payment.payment_id;
                // Conditional on PENDING_PAYMENT: a racing retry may have confirmed it
                // already, or the reconciler rejected it (and cancels the payment).
                let confirmed = self
                    .db
                    .write({
                        let id = id.clone();
                        move |c| storage::confirm(c, &id, &payment_id)
                    })
                    .await?;
                let current = match confirmed {
                    Some(confirmed) => confirmed,
                    None => self.find(&id).await?,
                };
                if current.state == ReservationState::Confirmed {
                    Ok(current)
                } else {
                    Err(BookingError::Rejected(
                        current.rejection_reason.unwrap_or_default(),
                    ))
                }
            }
            Ok(payment_pb::PaymentState::Declined | payment_pb::PaymentState::Cancelled) => {
                let reason = if payment.decline_reason.is_empty() {
                    "payment was cancelled".to_owned()
                } else {
                    payment.decline_reason
                };
                let stored_reason = reason.clone();
                self.db
                    .write(move |c| storage::reject(c, &id, &stored_reason, false))
                    .await?;
                Err(BookingError::PaymentDeclined(reason))
            }
            Ok(payment_pb::PaymentState::Unspecified) | Err(_) => {
                Err(self.unavailable("payment outcome not settled yet"))
            }
        }
    }

    fn unavailable(&self, reason: &str) -> BookingError {
        BookingError::PaymentUnavailable {
            reason: reason.to_owned(),
            retry_after: self.payment.retry_after(),
        }
    }

    async fn find(&self, id: &str) -> Result<Reservation, BookingError> {
        let key = id.to_owned();
        self.db
            .read(move |c| storage::find_by_id(c, &key))
            .await?
            .ok_or_else(|| BookingError::NotFound(id.to_owned()))
    }

    /// Stores a new booking, or returns the one stored under the same request_id.
    async fn insert_or_find(&self, reservation: Reservation) -> Result<Reservation, BookingError> {
        let customer = reservation.customer_id.clone();
        let key = reservation.request_id.as_str().to_owned();
        Ok(self
            .db
            .insert_or_find(reservation, storage::insert, move |c| {
                storage::find_by_idempotency_key(c, &customer, &key)
            })
            .await?)
    }
}
