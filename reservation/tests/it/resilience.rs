//! N1 and N3 under faults: payment stopped, hung, recovering; unknown outcomes settle.

use std::{sync::atomic::Ordering, time::Duration};

use ssak3_common::auth::Role;
use ssak3_payment::config::GatewayConfig;
use ssak3_proto::{payment::v1 as payment_pb, reservation::v1 as pb};
use tonic::Code;
use tower_resilience_circuitbreaker::CircuitState;

use crate::support::{
    Backend, Mesh, Options, TestResult, as_user, booking, eventually_within, retry_delay,
};

#[tokio::test]
async fn payment_down_answers_unavailable_with_retry_info_and_establishes_nothing() -> TestResult {
    let mut options = Options::new(Backend::Sqlite);
    options.reconcile.pending_timeout_ms = 300;
    let mut mesh = Mesh::start(options).await;
    mesh.stop_payment().await;

    let status = mesh
        .reservations()
        .await
        .create_reservation(as_user("alice", Role::Customer, booking("req-1")))
        .await
        .expect_err("booking succeeded with payment down");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("pay again shortly"),
        "{}",
        status.message()
    );
    // The cause (a refused connection) is for the log, not for the customer.
    assert!(
        !status.message().contains("error") && !status.message().contains("transport"),
        "{}",
        status.message()
    );
    assert!(retry_delay(&status).is_some(), "RetryInfo detail missing");

    // Not established now, and rejected once the pending timeout passes.
    let stored = mesh.stored("alice", "req-1").await;
    assert!(stored.is_none_or(|r| !r.is_established()));
    eventually_within(
        Duration::from_secs(10),
        "the abandoned booking is rejected",
        || async {
            mesh.stored("alice", "req-1")
                .await
                .is_some_and(|r| r.state.as_str() == "REJECTED")
                .then_some(())
        },
    )
    .await;
    assert_eq!(mesh.stored_in_state("CONFIRMED").await, 0);
    assert_eq!(mesh.gateway.net_charged_units(), 0);
    Ok(())
}

#[tokio::test]
async fn a_hung_payment_trips_the_breaker_and_is_then_left_alone_until_it_recovers() -> TestResult {
    // Open for 4 s: long enough for the 20 calls below on a busy machine.
    let mesh = Mesh::start(Options::new(Backend::Sqlite).with_breaker(200, 4, 4_000)).await;
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 60_000,
        ..GatewayConfig::default()
    });
    let mut client = mesh.reservations().await;

    for n in 0..4 {
        let call = client.create_reservation(as_user(
            "alice",
            Role::Customer,
            booking(&format!("hung-{n}")),
        ));
        // Returns at the deadline rather than waiting for the hung payment.
        let status = tokio::time::timeout(Duration::from_secs(10), call)
            .await?
            .expect_err("booking succeeded with payment hung");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(retry_delay(&status).is_some());
    }
    assert_eq!(
        mesh.payment_client.breaker().breaker_state(),
        CircuitState::Open
    );
    // Let the timed-out requests that are still on the wire land, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = mesh.gateway.charges_attempted();
    assert!(reached <= 4, "{reached} calls for 4 bookings");

    for n in 0..20 {
        let status = client
            .create_reservation(as_user(
                "alice",
                Role::Customer,
                booking(&format!("open-{n}")),
            ))
            .await
            .expect_err("booking succeeded with the breaker open");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(retry_delay(&status).is_some());
    }
    assert_eq!(
        mesh.gateway.charges_attempted(),
        reached,
        "calls reached payment while the breaker was open"
    );
    assert!(
        mesh.stored("alice", "open-0").await.is_none(),
        "nothing stored while open"
    );

    // Payment recovers: after the open period a probe goes through and closes the breaker.
    mesh.gateway.set_behaviour(GatewayConfig::default());
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    let probe = client
        .create_reservation(as_user("alice", Role::Customer, booking("probe")))
        .await?
        .into_inner();
    assert_eq!(probe.state(), pb::ReservationState::Confirmed);
    assert_eq!(
        mesh.payment_client.breaker().breaker_state(),
        CircuitState::Closed
    );
    assert_eq!(
        mesh.payment_client
            .breaker()
            .transitions()
            .opened
            .load(Ordering::SeqCst),
        1
    );
    Ok(())
}

/// Payment approves after the reservation service stopped waiting for it.
async fn late_approval(
    options: Options,
    request: pb::CreateReservationRequest,
) -> (Mesh, tonic::Status) {
    let mesh = Mesh::start(options.with_breaker(200, 50, 60_000)).await;
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 600,
        ..GatewayConfig::default()
    });
    let status = mesh
        .reservations()
        .await
        .create_reservation(as_user("alice", Role::Customer, request))
        .await
        .expect_err("booking succeeded past the deadline");
    // Payment finishes the charge although nobody waits for the answer.
    eventually_within(Duration::from_secs(10), "payment approves", || async {
        (mesh.gateway.approved_charges() == 1).then_some(())
    })
    .await;
    mesh.gateway.set_behaviour(GatewayConfig::default());
    (mesh, status)
}

#[tokio::test]
async fn a_lost_approval_is_compensated_when_the_customer_does_not_retry() -> TestResult {
    let mut options = Options::new(Backend::Postgres);
    options.reconcile.pending_timeout_ms = 1_000;
    let (mesh, status) = late_approval(options, booking("late")).await;
    assert_eq!(status.code(), Code::Unavailable);

    eventually_within(
        Duration::from_secs(15),
        "the booking is rejected and its payment cancelled",
        || async {
            let rejected = mesh
                .stored("alice", "late")
                .await
                .is_some_and(|r| r.state.as_str() == "REJECTED");
            let id = mesh
                .stored("alice", "late")
                .await
                .map(|r| r.reservation_id.as_str().to_owned());
            let cancelled = match id {
                Some(id) => mesh
                    .payment_of(&id)
                    .await
                    .is_ok_and(|p| p.state() == payment_pb::PaymentState::Cancelled),
                None => false,
            };
            (rejected && cancelled).then_some(())
        },
    )
    .await;
    assert_eq!(
        mesh.gateway.net_charged_units(),
        0,
        "the late charge was refunded"
    );
    assert_eq!(mesh.stored_in_state("CONFIRMED").await, 0);
    Ok(())
}

#[tokio::test]
async fn a_lost_approval_is_confirmed_when_the_customer_retries() -> TestResult {
    let request = booking("late");
    let (mesh, status) = late_approval(Options::new(Backend::Sqlite), request.clone()).await;
    assert_eq!(status.code(), Code::Unavailable);
    let retried = mesh
        .reservations()
        .await
        .create_reservation(as_user("alice", Role::Customer, request))
        .await?
        .into_inner();
    assert_eq!(retried.state(), pb::ReservationState::Confirmed);
    let payment = mesh.payment_of(&retried.reservation_id).await?;
    assert_eq!(payment.state(), payment_pb::PaymentState::Approved);
    assert_eq!(payment.payment_id, retried.payment_id);
    assert_eq!(mesh.gateway.approved_charges(), 1);
    Ok(())
}

#[tokio::test]
async fn a_retry_of_a_confirmed_booking_is_answered_while_the_breaker_is_open() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite).with_breaker(200, 4, 60_000)).await;
    let mut client = mesh.reservations().await;
    let first = booking("before");
    let confirmed = client
        .create_reservation(as_user("alice", Role::Customer, first.clone()))
        .await?
        .into_inner();
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 60_000,
        ..GatewayConfig::default()
    });
    for n in 0..4 {
        let _ = client
            .create_reservation(as_user(
                "alice",
                Role::Customer,
                booking(&format!("hung-{n}")),
            ))
            .await;
    }
    assert_eq!(
        mesh.payment_client.breaker().breaker_state(),
        CircuitState::Open
    );
    let retried = client
        .create_reservation(as_user("alice", Role::Customer, first))
        .await?
        .into_inner();
    assert_eq!(retried.reservation_id, confirmed.reservation_id);
    assert_eq!(retried.state(), pb::ReservationState::Confirmed);
    // A new booking is still refused at once, and stores nothing.
    let refused = client
        .create_reservation(as_user("alice", Role::Customer, booking("while-open")))
        .await
        .expect_err("booked while the breaker was open");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(mesh.stored("alice", "while-open").await.is_none());
    Ok(())
}

/// Under steady load, payment hangs for four seconds (twice the deadline):
/// with the default settings the breaker must open during that hang, so that
/// callers are refused at once instead of each waiting out the deadline, and
/// close again once payment answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_during_a_short_hang_under_load() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for client in 0..8 {
        let mut reservations = mesh.reservations().await;
        let stop = std::sync::Arc::clone(&stop);
        load.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let _ = reservations
                    .create_reservation(as_user(
                        &format!("client-{client}"),
                        Role::Customer,
                        booking(&format!("load-{n}")),
                    ))
                    .await;
            }
        });
    }
    // A steady stream of successes first, then payment hangs for 4 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        mesh.payment_client.breaker().breaker_state(),
        CircuitState::Closed
    );
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 60_000,
        ..GatewayConfig::default()
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    mesh.gateway.set_behaviour(GatewayConfig::default());
    let opened = mesh
        .payment_client
        .breaker()
        .transitions()
        .opened
        .load(Ordering::SeqCst);
    assert!(opened >= 1, "the breaker stayed closed through the hang");
    // Payment is back: a probe goes through and the breaker closes under the same load.
    eventually_within(Duration::from_secs(20), "the breaker to close", || async {
        (mesh.payment_client.breaker().breaker_state() == CircuitState::Closed).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.shutdown().await;
    assert!(
        mesh.payment_client
            .breaker()
            .transitions()
            .closed
            .load(Ordering::SeqCst)
            >= 1
    );
    Ok(())
}

/// Payment's connection breaks while a charge is in flight, as when payment
/// is killed or the network drops it: the customer is told UNAVAILABLE with
/// RetryInfo (the charge may or may not have gone through, and a retry
/// settles it), and a retry with the same request_id confirms the booking
/// with one charge.
#[tokio::test]
async fn a_charge_cut_off_mid_call_is_unavailable_and_a_retry_confirms_it_once() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 1_000,
        ..GatewayConfig::default()
    });
    let request = booking("cut-off");
    let mut reservations = mesh.reservations().await;
    let mut first = reservations.clone();
    let sent = request.clone();
    let call = tokio::spawn(async move {
        first
            .create_reservation(as_user("alice", Role::Customer, sent))
            .await
    });
    eventually_within(Duration::from_secs(5), "the charge in flight", || async {
        (mesh.gateway.charges_attempted() == 1).then_some(())
    })
    .await;
    mesh.payment_link.sever();

    let status = call.await?.expect_err("the cut-off booking succeeded");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(retry_delay(&status).is_some(), "RetryInfo detail missing");

    mesh.gateway.set_behaviour(GatewayConfig::default());
    let confirmed = reservations
        .create_reservation(as_user("alice", Role::Customer, request))
        .await?
        .into_inner();
    assert_eq!(confirmed.state(), pb::ReservationState::Confirmed);
    assert_eq!(mesh.gateway.approved_charges(), 1);
    assert_eq!(mesh.stored_count().await, 1);
    Ok(())
}

/// PostgreSQL restarts under both services (every connection they hold is
/// terminated): a booking made at that moment is UNAVAILABLE with RetryInfo,
/// never INTERNAL, and the customer's retries with the same request_id
/// confirm it once.
#[tokio::test]
async fn a_database_restart_is_unavailable_and_a_retry_books_once() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Postgres)).await;
    let mut reservations = mesh.reservations().await;
    // Both services have pooled connections in use a moment ago.
    reservations
        .create_reservation(as_user("alice", Role::Customer, booking("before")))
        .await?;

    mesh.terminate_database_connections();
    let request = booking("during-restart");
    let mut refusals = Vec::new();
    let confirmed = loop {
        match reservations
            .create_reservation(as_user("bob", Role::Customer, request.clone()))
            .await
        {
            Ok(confirmed) => break confirmed.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                let delay = retry_delay(&status).expect("RetryInfo detail missing");
                assert!(refusals.len() < 5, "still refused after {refusals:?}");
                refusals.push(status.message().to_owned());
                tokio::time::sleep(delay.min(Duration::from_millis(200))).await;
            }
        }
    };
    assert!(
        !refusals.is_empty(),
        "the broken connections went unnoticed"
    );
    assert_eq!(confirmed.state(), pb::ReservationState::Confirmed);
    assert_eq!(mesh.gateway.approved_charges(), 2);
    assert_eq!(mesh.stored_count().await, 2);
    Ok(())
}

/// A mesh on PostgreSQL whose payment hangs, with `count` bookings of
/// alice's left pending by it.
async fn with_pending_bookings(count: usize) -> Mesh {
    let mut options = Options::new(Backend::Postgres).with_breaker(300, 1_000, 60_000);
    options.gateway.latency_ms = 60_000;
    let mesh = Mesh::start(options).await;
    let mut reservations = mesh.reservations().await;
    for n in 0..count {
        let status = reservations
            .create_reservation(as_user(
                "alice",
                Role::Customer,
                booking(&format!("hung-{n}")),
            ))
            .await
            .expect_err("payment hangs");
        assert_eq!(status.code(), Code::Unavailable);
    }
    mesh
}

/// Two replicas' reconcilers claim at the same moment: each unsettled
/// reservation goes to one of them, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcilers_of_two_replicas_claim_each_reservation_once() -> TestResult {
    let mesh = with_pending_bookings(12).await;
    assert_eq!(mesh.stored_in_state("PENDING_PAYMENT").await, 12);

    let now = ssak3_common::time::now();
    let claim = |db: ssak3_common::db::Database| async move {
        let mut claimed = Vec::new();
        loop {
            let rows = db
                .write(move |c| {
                    ssak3_reservation::storage::claim_unsettled(
                        c,
                        now,
                        5,
                        now,
                        now + chrono::TimeDelta::seconds(60),
                    )
                })
                .await?;
            if rows.is_empty() {
                return Ok::<_, ssak3_common::db::StorageError>(claimed);
            }
            claimed.extend(rows.into_iter().map(|r| r.reservation_id));
        }
    };
    let (a, b) = tokio::join!(
        claim(mesh.reservation_database()),
        claim(mesh.reservation_database())
    );
    let mut all: Vec<_> = a?.into_iter().chain(b?).collect();
    assert_eq!(
        all.len(),
        12,
        "a reservation was claimed twice or not at all"
    );
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12);
    Ok(())
}

/// The reconciler's claim reads the unsettled reservations, not the whole
/// history: with twenty thousand settled ones beside three left pending, it
/// finds the three without scanning the table (as it did every five
/// seconds, per replica, ever longer as bookings accumulate).
#[tokio::test]
async fn the_reconcilers_claim_does_not_scan_settled_reservations() -> TestResult {
    use diesel::{Connection as _, RunQueryDsl as _};
    let mesh = with_pending_bookings(3).await;
    let db = mesh.reservation_database();
    db.write(|c| {
        diesel::sql_query(
            "INSERT INTO reservations (reservation_id, customer_id, request_id, cleaner_id, \
               address, scheduled_at, service_type, note, price_units, currency_code, state, \
               payment_id, version, create_time, update_time) \
             SELECT 'settled-' || n, 'bob', 'req-' || n, 'acme-cleaning', 'Seoul', now(), \
               'STANDARD', '', 50000, 'KRW', 'CONFIRMED', 'pay-' || n, 2, \
               now() - interval '1 day', now() - interval '1 day' \
             FROM generate_series(1, 20000) AS n",
        )
        .execute(c)?;
        diesel::sql_query("ANALYZE reservations").execute(c)
    })
    .await?;

    #[derive(diesel::QueryableByName)]
    struct Scans {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq_scan: i64,
    }
    let now = ssak3_common::time::now();
    let (claimed, scans) = db
        .write(move |c| {
            c.transaction(|c| {
                let claimed = ssak3_reservation::storage::claim_unsettled(
                    c,
                    now,
                    100,
                    now,
                    now + chrono::TimeDelta::seconds(60),
                )?;
                // This transaction's own reads, before they reach the statistics.
                let scans: Scans = diesel::sql_query(
                    "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'reservations'",
                )
                .get_result(c)?;
                Ok::<_, diesel::result::Error>((claimed, scans.seq_scan))
            })
        })
        .await?;
    assert_eq!(claimed.len(), 3, "the pending reservations are claimed");
    assert_eq!(scans, 0, "the claim scanned the whole reservations table");
    Ok(())
}

/// Replicas starting together on a fresh PostgreSQL database each migrate
/// it: one at a time, and every one of them gets through (an index built
/// `CONCURRENTLY` waited for the replicas waiting their turn, which waited
/// for it: a deadlock PostgreSQL broke by failing a start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_all_migrate_one_database() -> TestResult {
    use ssak3_common::db::{Database, DatabaseUrl};
    let db = ssak3_common::test_support::TestDb::postgres();
    let url = DatabaseUrl::parse(&db.url())?;
    let replicas: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                Database::connect(&url, 1)?
                    .migrate(ssak3_reservation::storage::SCHEMA)
                    .await
            })
        })
        .collect();
    for replica in replicas {
        tokio::time::timeout(Duration::from_secs(30), replica)
            .await
            .expect("a replica's migration hangs")??;
    }
    Ok(())
}
