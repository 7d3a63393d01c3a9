//! F1 and N1: book and pay in one call; idempotent retries; declines.

use ssak3_common::auth::Role;
use ssak3_proto::{payment::v1 as payment_pb, reservation::v1 as pb, r#type::v1::Money};
use tonic::Code;

use crate::support::{Backend, Mesh, Options, TestResult, as_user, booking};

async fn happy_path(backend: Backend) -> TestResult {
    let mesh = Mesh::start(Options::new(backend)).await;
    let mut client = mesh.reservations().await;

    let created = client
        .create_reservation(as_user("alice", Role::Customer, booking("req-1")))
        .await?
        .into_inner();
    assert_eq!(created.state(), pb::ReservationState::Confirmed);
    assert_eq!(created.customer_id, "alice");
    assert_eq!(
        created.price,
        Some(Money {
            currency_code: "KRW".into(),
            units: 50_000
        })
    );
    assert!(!created.payment_id.is_empty());

    let fetched = client
        .get_reservation(as_user(
            "alice",
            Role::Customer,
            pb::GetReservationRequest {
                reservation_id: created.reservation_id.clone(),
            },
        ))
        .await?
        .into_inner();
    assert_eq!(fetched, created);

    let payment = mesh.payment_of(&created.reservation_id).await?;
    assert_eq!(payment.state(), payment_pb::PaymentState::Approved);
    assert_eq!(payment.payment_id, created.payment_id);
    assert_eq!(payment.amount.map(|m| m.units), Some(50_000));
    assert_eq!(mesh.gateway.net_charged_units(), 50_000);
    Ok(())
}

#[tokio::test]
async fn booking_confirms_and_pays_on_sqlite() -> TestResult {
    happy_path(Backend::Sqlite).await
}

#[tokio::test]
async fn booking_confirms_and_pays_on_postgres() -> TestResult {
    happy_path(Backend::Postgres).await
}

#[tokio::test]
async fn a_sequential_retry_returns_the_same_reservation_and_charges_once() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let mut client = mesh.reservations().await;
    let request = booking("req-retry");
    let first = client
        .create_reservation(as_user("alice", Role::Customer, request.clone()))
        .await?
        .into_inner();
    let second = client
        .create_reservation(as_user("alice", Role::Customer, request.clone()))
        .await?
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(mesh.stored_count().await, 1);
    assert_eq!(mesh.gateway.approved_charges(), 1);

    // The same key from another customer is another booking.
    let bob = client
        .create_reservation(as_user("bob", Role::Customer, request))
        .await?
        .into_inner();
    assert_ne!(bob.reservation_id, first.reservation_id);
    assert_eq!(mesh.gateway.approved_charges(), 2);
    Ok(())
}

async fn concurrent_retries(backend: Backend) -> TestResult {
    let mesh = Mesh::start(Options::new(backend)).await;
    let request = booking("req-race");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let mut client = mesh.reservations().await;
        let request = request.clone();
        calls.spawn(async move {
            client
                .create_reservation(as_user("alice", Role::Customer, request))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(result) = calls.join_next().await {
        let reservation = result??;
        assert_eq!(reservation.state(), pb::ReservationState::Confirmed);
        ids.insert(reservation.reservation_id);
    }
    assert_eq!(ids.len(), 1, "one reservation for one request_id");
    assert_eq!(mesh.stored_count().await, 1);
    assert_eq!(mesh.gateway.approved_charges(), 1, "charged once");
    let id = ids.into_iter().next().unwrap_or_default();
    assert_eq!(
        mesh.payment_of(&id).await?.state(),
        payment_pb::PaymentState::Approved
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_retries_make_one_reservation_and_one_charge_on_sqlite() -> TestResult {
    concurrent_retries(Backend::Sqlite).await
}

#[tokio::test]
async fn concurrent_retries_make_one_reservation_and_one_charge_on_postgres() -> TestResult {
    concurrent_retries(Backend::Postgres).await
}

#[tokio::test]
async fn reusing_a_request_id_for_another_booking_is_refused() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let mut client = mesh.reservations().await;
    client
        .create_reservation(as_user("alice", Role::Customer, booking("req-1")))
        .await?;
    let mut different = booking("req-1");
    different.address = "99 Other-ro".into();
    let status = client
        .create_reservation(as_user("alice", Role::Customer, different))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(status, Some(Code::AlreadyExists));
    assert_eq!(mesh.stored_count().await, 1);
    assert_eq!(mesh.gateway.approved_charges(), 1);
    Ok(())
}

#[tokio::test]
async fn a_declined_payment_establishes_nothing() -> TestResult {
    let mut options = Options::new(Backend::Postgres);
    options.gateway.decline_customers = vec!["mallory".into()];
    let mesh = Mesh::start(options).await;
    let mut client = mesh.reservations().await;
    let request = booking("req-1");

    let status = client
        .create_reservation(as_user("mallory", Role::Customer, request.clone()))
        .await
        .err();
    assert_eq!(
        status.as_ref().map(|s| s.code()),
        Some(Code::FailedPrecondition)
    );
    assert!(status.is_some_and(|s| s.message().contains("declined")));

    let stored = mesh.stored("mallory", "req-1").await;
    assert_eq!(
        stored.as_ref().map(|r| r.state.as_str()),
        Some("REJECTED"),
        "the attempt is recorded as rejected, not established"
    );
    let id = stored
        .map(|r| r.reservation_id.as_str().to_owned())
        .unwrap_or_default();
    assert_eq!(
        mesh.payment_of(&id).await?.state(),
        payment_pb::PaymentState::Declined
    );
    assert_eq!(mesh.gateway.net_charged_units(), 0);

    // Retrying the declined booking gives the same answer and charges nothing.
    let again = client
        .create_reservation(as_user("mallory", Role::Customer, request))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(again, Some(Code::FailedPrecondition));
    assert_eq!(
        mesh.gateway.charges_attempted(),
        1,
        "the retry never reached payment"
    );
    Ok(())
}

/// A batch of new reservations holding a repeat of a request (in the
/// batch, or stored before) inserts the others in its one statement and
/// skips the repeat, whose caller then finds the stored reservation.
async fn repeats_in_a_batch(backend: Backend) -> TestResult {
    use ssak3_common::{
        db::{Database, DatabaseUrl},
        ids::{CompanyId, CustomerId, RequestId},
        test_support::TestDb,
    };
    use ssak3_reservation::{
        config::PriceList,
        domain::{Address, Booking, Note, Reservation, ScheduledAt, ServiceType},
        storage,
    };
    let test_db = match backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres(),
    };
    let db = Database::connect(&DatabaseUrl::parse(&test_db.url())?, 2)?;
    db.migrate(storage::SCHEMA).await?;
    let now = chrono::Utc::now();
    let book = |customer: &str, request: &str| -> Result<Reservation, Box<dyn std::error::Error>> {
        let booking = Booking {
            request_id: RequestId::parse(request)?,
            company_id: CompanyId::parse("acme-cleaning")?,
            address: Address::parse("12 Gangnam-daero, Seoul")?,
            scheduled_at: ScheduledAt::parse(Some(now + chrono::Duration::days(1)), now)?,
            service_type: ServiceType::Deep,
            note: Note::parse("")?,
        };
        let customer = CustomerId::parse(customer)?;
        Ok(Reservation::book(
            customer,
            booking,
            &PriceList::default(),
            now,
        ))
    };
    let batch = vec![
        book("alice", "k-1")?,
        book("alice", "k-1")?,
        book("bob", "k-1")?,
    ];
    let inserted = db
        .transaction(move |c| storage::insert_all(c, &batch))
        .await?;
    assert_eq!(inserted, [true, false, true]);
    let later = vec![book("carol", "k-1")?, book("alice", "k-1")?];
    let inserted = db
        .transaction(move |c| storage::insert_all(c, &later))
        .await?;
    assert_eq!(inserted, [true, false]);
    Ok(())
}

#[tokio::test]
async fn a_batch_with_a_repeated_request_stores_the_others_and_skips_it_on_sqlite() -> TestResult {
    repeats_in_a_batch(Backend::Sqlite).await
}

#[tokio::test]
async fn a_batch_with_a_repeated_request_stores_the_others_and_skips_it_on_postgres() -> TestResult
{
    repeats_in_a_batch(Backend::Postgres).await
}
