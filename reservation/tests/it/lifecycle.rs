//! The lifecycle over gRPC: each refusal the aggregate decides reaches the
//! caller with the right code (the rules themselves are unit-tested next to
//! the aggregate), and a company pages through its own jobs only.

use prost::Message as _;
use ssak3_common::auth::Role;
use ssak3_proto::reservation::v1 as pb;
use tonic::Code;

use crate::support::{Backend, Mesh, Options, TestResult, as_user, booking};

const CUSTOMER: &str = "alice";
const COMPANY: &str = "acme-cleaning";

async fn cancel(mesh: &Mesh, customer: &str, id: &str) -> Result<pb::Reservation, tonic::Status> {
    mesh.reservations()
        .await
        .cancel_reservation(as_user(
            customer,
            Role::Customer,
            pb::CancelReservationRequest {
                reservation_id: id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn complete(mesh: &Mesh, company: &str, id: &str) -> Result<pb::Reservation, tonic::Status> {
    mesh.cleaning()
        .await
        .complete_cleaning(as_user(
            company,
            Role::Cleaner,
            pb::CompleteCleaningRequest {
                reservation_id: id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn book(mesh: &Mesh, company: &str) -> String {
    let mut request = booking(&uuid::Uuid::new_v4().to_string());
    request.cleaner_id = company.into();
    mesh.reservations()
        .await
        .create_reservation(as_user(CUSTOMER, Role::Customer, request))
        .await
        .expect("booking")
        .into_inner()
        .reservation_id
}

#[tokio::test]
async fn refusals_reach_the_caller_with_the_right_code() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let cleaned = book(&mesh, COMPANY).await;
    let cancelled = book(&mesh, COMPANY).await;

    // Another company's job and another customer's reservation do not exist for them.
    let other_company = complete(&mesh, "other-co", &cleaned).await;
    assert_eq!(
        other_company.map_err(|s| s.code()).err(),
        Some(Code::NotFound)
    );
    let other_customer = cancel(&mesh, "mallory", &cleaned).await;
    assert_eq!(
        other_customer.map_err(|s| s.code()).err(),
        Some(Code::NotFound)
    );

    assert_eq!(
        complete(&mesh, COMPANY, &cleaned).await?.state(),
        pb::ReservationState::Cleaned
    );
    assert_eq!(
        cancel(&mesh, CUSTOMER, &cancelled).await?.state(),
        pb::ReservationState::Cancelled
    );
    // Repeating a move that happened answers with the reservation as it is.
    assert_eq!(
        cancel(&mesh, CUSTOMER, &cancelled).await?.state(),
        pb::ReservationState::Cancelled
    );

    let status = cancel(&mesh, CUSTOMER, &cleaned)
        .await
        .expect_err("cancelled a cleaned job");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("is CLEANED"),
        "{}",
        status.message()
    );
    let status = complete(&mesh, COMPANY, &cancelled)
        .await
        .expect_err("completed a cancelled job");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("is CANCELLED"),
        "{}",
        status.message()
    );

    // Roles: a customer cannot complete; a cleaner cannot cancel.
    let status = mesh
        .cleaning()
        .await
        .complete_cleaning(as_user(
            CUSTOMER,
            Role::Customer,
            pb::CompleteCleaningRequest {
                reservation_id: cleaned.clone(),
            },
        ))
        .await
        .expect_err("a customer completed a job");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = mesh
        .reservations()
        .await
        .cancel_reservation(as_user(
            COMPANY,
            Role::Cleaner,
            pb::CancelReservationRequest {
                reservation_id: cancelled.clone(),
            },
        ))
        .await
        .expect_err("a company cancelled a booking");
    assert_eq!(status.code(), Code::PermissionDenied);

    // A malformed id names the field.
    let status = cancel(&mesh, CUSTOMER, "")
        .await
        .expect_err("accepted an empty id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("reservation_id"),
        "{}",
        status.message()
    );
    Ok(())
}

#[tokio::test]
async fn jobs_are_paged_and_only_the_company_s_own() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Postgres)).await;
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(book(&mesh, COMPANY).await);
    }
    book(&mesh, "other-co").await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = mesh
            .cleaning()
            .await
            .list_jobs(as_user(
                COMPANY,
                Role::Cleaner,
                pb::ListJobsRequest {
                    page_size: 2,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        pages += 1;
        assert!(page.jobs.len() <= 2);
        seen.extend(page.jobs.into_iter().map(|j| j.reservation_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    mine.sort();
    seen.sort();
    assert_eq!(seen, mine);

    let status = mesh
        .cleaning()
        .await
        .list_jobs(as_user(
            COMPANY,
            Role::Cleaner,
            pb::ListJobsRequest {
                page_size: 2,
                page_token: "not-a-token".into(),
            },
        ))
        .await
        .expect_err("accepted a made-up page token");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("page_token"),
        "{}",
        status.message()
    );
    Ok(())
}

/// Reservations cancelled twice each, all at once (their moves stored in
/// batches): each reservation is cancelled once, with one event.
async fn cancelling_many_at_once(backend: Backend) -> TestResult {
    let mesh = Mesh::start(Options::new(backend)).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let booked = mesh
            .reservations()
            .await
            .create_reservation(as_user(
                "alice",
                Role::Customer,
                booking(&format!("req-many-{n}")),
            ))
            .await?
            .into_inner();
        ids.push(booked.reservation_id);
    }
    let mut cancels = tokio::task::JoinSet::new();
    for id in ids.iter().chain(&ids) {
        let mut client = mesh.reservations().await;
        let request = pb::CancelReservationRequest {
            reservation_id: id.clone(),
        };
        cancels.spawn(async move {
            client
                .cancel_reservation(as_user("alice", Role::Customer, request))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    while let Some(cancelled) = cancels.join_next().await {
        assert_eq!(cancelled??.state(), pb::ReservationState::Cancelled);
    }
    #[derive(diesel::QueryableByName)]
    struct Announced {
        #[diesel(sql_type = diesel::sql_types::Binary)]
        payload: Vec<u8>,
    }
    let announced = mesh
        .reservation_database()
        .read(|c| {
            use diesel::RunQueryDsl as _;
            diesel::sql_query(
                "SELECT payload FROM outbox WHERE routing_key = 'reservation.cancelled'",
            )
            .load::<Announced>(c)
        })
        .await?;
    let mut announced: Vec<String> = announced
        .iter()
        .map(|row| ssak3_proto::events::v1::Event::decode(row.payload.as_slice()))
        .map(|event| event.map(|e| e.reservation_id))
        .collect::<Result<_, _>>()?;
    announced.sort();
    ids.sort();
    assert_eq!(announced, ids, "one cancellation announced per reservation");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_cancelled_twice_at_once_are_cancelled_and_announced_once_on_postgres()
-> TestResult {
    cancelling_many_at_once(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_cancelled_twice_at_once_are_cancelled_and_announced_once_on_sqlite()
-> TestResult {
    cancelling_many_at_once(Backend::Sqlite).await
}
