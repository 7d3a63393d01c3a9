//! The lifecycle over gRPC: each refusal the aggregate decides reaches the
//! caller with the right code (the rules themselves are unit-tested next to
//! the aggregate), and a company pages through its own jobs only.

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
