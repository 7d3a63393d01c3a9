//! The clients of the fault suite: each books, and sometimes cancels or
//! has the company complete, retrying every transient answer with the same
//! request as a well-behaved client does; every attempt and what each
//! client was finally told go into the history.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ssak3_common::{auth, time};
use ssak3_proto::reservation::v1::{
    self as reservation, ReservationState, cleaning_service_client::CleaningServiceClient,
    reservation_service_client::ReservationServiceClient,
};
use tonic::{Code, Request, Status, transport::Channel};

use super::audit::{Booking, Confirmed};

/// The company the clients book.
pub const COMPANY: &str = "faults-cleaning";

/// How long a client waits for one answer before it tries again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// One call and its answer.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub sent: Instant,
    pub answered: Instant,
    pub code: Code,
    /// A CreateReservation answered CONFIRMED.
    pub confirmed: bool,
}

/// One booking: when it started, how many attempts its creation took, what
/// its client was told.
#[derive(Clone, Debug)]
pub struct Traced {
    pub started: Instant,
    pub attempts: u32,
    pub booking: Booking,
}

/// Everything the clients did.
#[derive(Debug, Default)]
pub struct History {
    pub attempts: Vec<Attempt>,
    pub bookings: Vec<Traced>,
}

/// Answers a client retries with the same request: the call may not have
/// happened, or happened without an answer reaching the client.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

/// What the clients share.
#[derive(Clone)]
pub struct Clients {
    pub channel: Channel,
    pub history: Arc<Mutex<History>>,
    pub stop: Arc<AtomicBool>,
    /// How long one operation is retried before the client gives up.
    pub patience: Duration,
    /// The company's token.
    pub company: Arc<String>,
}

impl Clients {
    fn record(&self, attempt: Attempt) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempts
            .push(attempt);
    }

    /// `call` until it answers for good, or patience runs out; returns the
    /// last answer and the number of attempts.
    async fn retried<T, F, Fut>(
        &self,
        mut call: F,
        confirmed: fn(&T) -> bool,
    ) -> (Result<T, Status>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let began = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let sent = Instant::now();
            let answer = tokio::time::timeout(ATTEMPT_TIMEOUT, call())
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")));
            let code = answer.as_ref().map_or_else(Status::code, |_| Code::Ok);
            self.record(Attempt {
                sent,
                answered: Instant::now(),
                code,
                confirmed: answer.as_ref().is_ok_and(confirmed),
            });
            match answer {
                Err(status) if transient(status.code()) && began.elapsed() < self.patience => {
                    // Exponential backoff with jitter, a hint from the
                    // service shortening nothing but capping the wait.
                    let hint = tonic_types::StatusExt::get_details_retry_info(&status)
                        .and_then(|r| r.retry_delay)
                        .unwrap_or(Duration::from_secs(2));
                    let backoff = Duration::from_millis(100 << attempts.min(5))
                        .min(hint)
                        .min(Duration::from_secs(2));
                    tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
                }
                answer => return (answer, attempts),
            }
        }
    }

    /// Client `n` books as its own customer until told to stop.
    pub async fn run(self, n: usize, token: String) {
        let customer = format!("faults-customer-{n}");
        let mut i = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            i += 1;
            let started = Instant::now();
            let request_id = format!("faults-{n}-{i}");
            let request = reservation::CreateReservationRequest {
                request_id: request_id.clone(),
                cleaner_id: COMPANY.into(),
                address: "12 Gangnam-daero, Seoul".into(),
                scheduled_at: Some(time::to_timestamp(time::now() + chrono::TimeDelta::days(2))),
                service_type: reservation::ServiceType::Standard as i32,
                note: String::new(),
            };
            let (answer, attempts) = self
                .retried(
                    || {
                        let mut client = ReservationServiceClient::new(self.channel.clone());
                        let request = signed(&token, request.clone());
                        async move {
                            client
                                .create_reservation(request?)
                                .await
                                .map(|r| r.into_inner())
                        }
                    },
                    |r| r.state() == ReservationState::Confirmed,
                )
                .await;
            let mut booking = Booking {
                customer: customer.clone(),
                request_id,
                ..Booking::default()
            };
            if let Some(r) = answer
                .as_ref()
                .ok()
                .filter(|r| r.state() == ReservationState::Confirmed)
            {
                booking.confirmed = Some(Confirmed {
                    reservation_id: r.reservation_id.clone(),
                    units: r.price.as_ref().map_or(0, |p| p.units),
                    currency: r
                        .price
                        .as_ref()
                        .map(|p| p.currency_code.clone())
                        .unwrap_or_default(),
                });
                match fastrand::u8(0..100) {
                    0..15 => self.cancel(&token, &r.reservation_id, &mut booking).await,
                    15..30 => self.complete(&r.reservation_id, &mut booking).await,
                    _ => {}
                }
            }
            self.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bookings
                .push(Traced {
                    started,
                    attempts,
                    booking,
                });
            // A steady pace rather than as fast as the system goes: the
            // machine is shared with the database and the broker.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cancel(&self, token: &str, id: &str, booking: &mut Booking) {
        booking.cancel_asked = true;
        let (answer, _) = self
            .retried(
                || {
                    let mut client = ReservationServiceClient::new(self.channel.clone());
                    let request = signed(
                        token,
                        reservation::CancelReservationRequest {
                            reservation_id: id.to_owned(),
                        },
                    );
                    async move {
                        client
                            .cancel_reservation(request?)
                            .await
                            .map(|r| r.into_inner())
                    }
                },
                |_| false,
            )
            .await;
        booking.cancelled = answer.is_ok_and(|r| r.state() == ReservationState::Cancelled);
    }

    async fn complete(&self, id: &str, booking: &mut Booking) {
        booking.complete_asked = true;
        let (answer, _) = self
            .retried(
                || {
                    let mut client = CleaningServiceClient::new(self.channel.clone());
                    let request = signed(
                        &self.company,
                        reservation::CompleteCleaningRequest {
                            reservation_id: id.to_owned(),
                        },
                    );
                    async move {
                        client
                            .complete_cleaning(request?)
                            .await
                            .map(|r| r.into_inner())
                    }
                },
                |_| false,
            )
            .await;
        booking.cleaned = answer.is_ok_and(|r| r.state() == ReservationState::Cleaned);
    }
}

fn signed<T>(token: &str, message: T) -> Result<Request<T>, Status> {
    auth::with_bearer(Request::new(message), token).map_err(Status::from)
}
