//! `ssak3 demo`: the whole story F1–F8 against a running system, printed as
//! a timeline of what each party sees, as it arrives.

use std::{future::Future, net::SocketAddr, time::Duration};

use crate::tokens::Tokens;
use anyhow::Context as _;
use ssak3_common::{
    auth::{self, Role},
    server::{HealthStatus, health_of},
    time,
};
use ssak3_proto::{
    mypage::v1::{self as mypage, my_page_service_client::MyPageServiceClient},
    notify::v1::{self as notify, notification_service_client::NotificationServiceClient},
    payment::v1::{self as payment, payment_service_client::PaymentServiceClient},
    reservation::v1::{
        self as reservation, cleaning_service_client::CleaningServiceClient,
        reservation_service_client::ReservationServiceClient,
    },
};
use tonic::{Request, transport::Channel};

const CUSTOMER: &str = "alice";
const COMPANY: &str = "acme-cleaning";
/// How long to wait for an event's effect before calling the system stuck.
const PATIENCE: Duration = Duration::from_secs(15);

struct Demo {
    started: tokio::time::Instant,
    /// The W3C trace context of the booking in progress.
    trace: String,
    customer: String,
    company: String,
    reservations: ReservationServiceClient<Channel>,
    cleaning: CleaningServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
    notifications: NotificationServiceClient<Channel>,
    pages: MyPageServiceClient<Channel>,
}

/// Runs the story against the system whose reservation service is at `target`
/// (payment, notify and mypage on the next three ports).
pub async fn run(target: SocketAddr, keys: &Tokens) -> anyhow::Result<()> {
    let at = |offset: u16| {
        let mut addr = target;
        addr.set_port(target.port().saturating_add(offset));
        addr
    };
    // A system just started may still be migrating its databases.
    for offset in 0..4 {
        let addr = at(offset);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while health_of(addr).await != Some(HealthStatus::Serving) {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the service at {addr} is not serving: start the system with `ssak3 up`, \
                     or run `ssak3 demo --standalone`"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let day = Duration::from_secs(86_400);
    let reservation_channel = connect(at(0)).await?;
    let mut demo = Demo {
        started: tokio::time::Instant::now(),
        trace: String::new(),
        customer: keys.issue(CUSTOMER, Role::Customer, day)?,
        company: keys.issue(COMPANY, Role::Cleaner, day)?,
        reservations: ReservationServiceClient::new(reservation_channel.clone()),
        cleaning: CleaningServiceClient::new(reservation_channel),
        payments: PaymentServiceClient::new(connect(at(1)).await?),
        notifications: NotificationServiceClient::new(connect(at(2)).await?),
        pages: MyPageServiceClient::new(connect(at(3)).await?),
    };
    println!("Ssak3 demo against {target} (customer {CUSTOMER}, company {COMPANY})\n");
    demo.clean_story().await?;
    println!();
    demo.cancel_story().await?;
    println!(
        "\nThe whole story ran in {:.2} s.",
        demo.started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| {
            format!("nothing answers at {addr}: start the system with `ssak3 up`, or run `ssak3 demo --standalone`")
        })
}

fn signed<T>(token: &str, message: T) -> anyhow::Result<Request<T>> {
    Ok(auth::with_bearer(Request::new(message), token)?)
}

/// A status as the timeline shows it: `PAID` for `RESERVATION_STATUS_PAID`.
fn status_name(status: mypage::ReservationStatus) -> &'static str {
    let name = status.as_str_name();
    name.strip_prefix("RESERVATION_STATUS_").unwrap_or(name)
}

fn history(view: &mypage::ReservationView) -> String {
    view.history
        .iter()
        .map(|h| status_name(h.status()))
        .collect::<Vec<_>>()
        .join(" → ")
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

impl Demo {
    /// `request` as a step of the current booking's trace.
    fn traced<T>(&self, mut request: Request<T>) -> Request<T> {
        if let Ok(value) = self.trace.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
        request
    }

    fn step(&self, requirement: &str, text: impl std::fmt::Display) {
        println!(
            "[{:>7.3}s] {requirement:<3} {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// F1, F4, F5, F2, F3: book, company told, page PAID, complete, customer told, page CLEANED.
    async fn clean_story(&mut self) -> anyhow::Result<()> {
        let booked = self.book("SERVICE_TYPE_DEEP").await?;
        let id = booked.reservation_id.clone();
        self.wait_for_notification(
            &self.company.clone(),
            &id,
            notify::NotificationKind::PaymentApproved,
            COMPANY,
        )
        .await?;
        self.wait_for_page(&id, mypage::ReservationStatus::Paid)
            .await?;

        let jobs = self
            .cleaning
            .list_jobs(signed(
                &self.company,
                reservation::ListJobsRequest::default(),
            )?)
            .await?
            .into_inner()
            .jobs;
        self.step(
            "F2",
            format!(
                "{COMPANY} lists its jobs ({} on the first page) and marks this one done",
                jobs.len()
            ),
        );
        let done = self
            .cleaning
            .complete_cleaning(self.traced(signed(
                &self.company,
                reservation::CompleteCleaningRequest {
                    reservation_id: id.clone(),
                },
            )?))
            .await?
            .into_inner();
        self.step("", format!("→ {}", state_name(done.state)));
        self.wait_for_notification(
            &self.customer.clone(),
            &id,
            notify::NotificationKind::CleaningCompleted,
            CUSTOMER,
        )
        .await?;
        self.wait_for_page(&id, mypage::ReservationStatus::Cleaned)
            .await?;
        Ok(())
    }

    /// F1, F6, F7, F8, F5: book, cancel, refund, company told, page REFUNDED.
    async fn cancel_story(&mut self) -> anyhow::Result<()> {
        let booked = self.book("SERVICE_TYPE_STANDARD").await?;
        let id = booked.reservation_id.clone();
        self.wait_for_page(&id, mypage::ReservationStatus::Paid)
            .await?;
        let cancelled = self
            .reservations
            .cancel_reservation(self.traced(signed(
                &self.customer,
                reservation::CancelReservationRequest {
                    reservation_id: id.clone(),
                },
            )?))
            .await?
            .into_inner();
        self.step(
            "F6",
            format!("{CUSTOMER} cancels it → {}", state_name(cancelled.state)),
        );
        let refunded = self
            .eventually("the payment to be cancelled", || {
                let mut payments = self.payments.clone();
                let request = signed(
                    &self.customer,
                    payment::GetPaymentRequest {
                        lookup: Some(payment::get_payment_request::Lookup::ReservationId(
                            id.clone(),
                        )),
                    },
                );
                async move {
                    let payment = payments.get_payment(request.ok()?).await.ok()?.into_inner();
                    (payment.state == payment::PaymentState::Cancelled as i32).then_some(payment)
                }
            })
            .await?;
        self.step(
            "F7",
            format!(
                "payment {} is CANCELLED: {} {} refunded",
                refunded.payment_id,
                refunded.amount.as_ref().map_or(0, |m| m.units),
                refunded
                    .amount
                    .as_ref()
                    .map_or("", |m| m.currency_code.as_str())
            ),
        );
        self.wait_for_notification(
            &self.company.clone(),
            &id,
            notify::NotificationKind::PaymentCancelled,
            COMPANY,
        )
        .await?;
        self.wait_for_page(&id, mypage::ReservationStatus::Refunded)
            .await?;
        Ok(())
    }

    async fn book(&mut self, service_type: &str) -> anyhow::Result<reservation::Reservation> {
        // The demo is the start of the booking's trace: every service joins it.
        let trace_id = random_hex(16);
        self.trace = format!("00-{trace_id}-{}-01", random_hex(8));
        let when = time::now() + chrono::TimeDelta::days(2);
        let kind = reservation::ServiceType::from_str_name(service_type)
            .unwrap_or(reservation::ServiceType::Standard);
        self.step(
            "F1",
            format!(
                "{CUSTOMER} books a {} cleaning with {COMPANY} for {} and pays in the same call",
                service_type
                    .trim_start_matches("SERVICE_TYPE_")
                    .to_lowercase(),
                when.format("%Y-%m-%d %H:%M UTC")
            ),
        );
        let booked = self
            .reservations
            .create_reservation(self.traced(signed(
                &self.customer,
                reservation::CreateReservationRequest {
                    request_id: uuid::Uuid::new_v4().to_string(),
                    cleaner_id: COMPANY.into(),
                    address: "12 Gangnam-daero, Seoul".into(),
                    scheduled_at: Some(time::to_timestamp(when)),
                    service_type: kind as i32,
                    note: "demo".into(),
                },
            )?))
            .await
            .context("booking failed")?
            .into_inner();
        let price = booked.price.as_ref();
        self.step(
            "",
            format!(
                "→ {} {}, {} {}, payment {}, trace {trace_id}",
                state_name(booked.state),
                booked.reservation_id,
                price.map_or(0, |p| p.units),
                price.map_or("", |p| p.currency_code.as_str()),
                booked.payment_id
            ),
        );
        Ok(booked)
    }

    async fn wait_for_notification(
        &mut self,
        token: &str,
        reservation_id: &str,
        kind: notify::NotificationKind,
        who: &str,
    ) -> anyhow::Result<()> {
        let requirement = match kind {
            notify::NotificationKind::PaymentApproved => "F4",
            notify::NotificationKind::CleaningCompleted => "F3",
            _ => "F8",
        };
        let found = self
            .eventually(
                &format!("{who}'s {} notification", kind.as_str_name()),
                || {
                    let mut client = self.notifications.clone();
                    let request = signed(
                        token,
                        notify::ListNotificationsRequest {
                            page_size: 500,
                            page_token: String::new(),
                        },
                    );
                    async move {
                        client
                            .list_notifications(request.ok()?)
                            .await
                            .ok()?
                            .into_inner()
                            .notifications
                            .into_iter()
                            .find(|n| n.reservation_id == reservation_id && n.kind == kind as i32)
                    }
                },
            )
            .await?;
        self.step(requirement, format!("{who} is notified: {}", found.message));
        Ok(())
    }

    async fn wait_for_page(
        &mut self,
        reservation_id: &str,
        status: mypage::ReservationStatus,
    ) -> anyhow::Result<()> {
        let view = self
            .eventually(&format!("my page to show {}", status_name(status)), || {
                let mut client = self.pages.clone();
                let request = signed(
                    &self.customer,
                    mypage::GetMyReservationRequest {
                        reservation_id: reservation_id.to_owned(),
                    },
                );
                async move {
                    let view = client
                        .get_my_reservation(request.ok()?)
                        .await
                        .ok()?
                        .into_inner();
                    (view.status() == status).then_some(view)
                }
            })
            .await?;
        self.step(
            "F5",
            format!(
                "{CUSTOMER}'s page shows {} (history: {})",
                status_name(view.status()),
                history(&view)
            ),
        );
        Ok(())
    }

    async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(found) = check().await {
                return Ok(found);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "gave up waiting for {what} after {PATIENCE:?}: are all four services running?"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A state as the timeline shows it: `CONFIRMED` for `RESERVATION_STATE_CONFIRMED`.
fn state_name(state: i32) -> &'static str {
    reservation::ReservationState::try_from(state).map_or("UNKNOWN", |s| {
        let name = s.as_str_name();
        name.strip_prefix("RESERVATION_STATE_").unwrap_or(name)
    })
}
