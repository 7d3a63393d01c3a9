//! The service shell: reflection lists the services; health turns SERVING only after migrations.

use std::time::Duration;

use diesel::{Connection as _, PgConnection, connection::SimpleConnection as _};
use ssak3_common::{
    auth::Role,
    events::Topology,
    test_support::{self, Running, ServingStatus, TestDb},
};
use ssak3_payment::config::GatewayConfig;
use ssak3_proto::reservation::v1 as pb;
use tonic_reflection::pb::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::support::{Backend, Mesh, Options, TestResult, as_user, booking, eventually_within};

#[tokio::test]
async fn reflection_lists_the_services_for_grpcurl() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let channel = tonic::transport::Endpoint::from_shared(mesh.reservation.endpoint())?
        .connect()
        .await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let listed = match responses.message().await?.and_then(|r| r.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    for name in [
        "ssak3.reservation.v1.ReservationService",
        "ssak3.reservation.v1.CleaningService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.iter().any(|s| s == name),
            "{name} missing from {listed:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_only_after_migrations_ran() -> TestResult {
    test_support::init_logs();
    let db = TestDb::postgres();
    // Hold a lock on diesel's migration table so that migrations cannot finish.
    let mut blocker = PgConnection::establish(&db.url())?;
    blocker.batch_execute(
        "CREATE TABLE __diesel_schema_migrations (
             version VARCHAR(50) PRIMARY KEY NOT NULL,
             run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )?;
    blocker.batch_execute("BEGIN")?;
    blocker.batch_execute("LOCK TABLE __diesel_schema_migrations IN ACCESS EXCLUSIVE MODE")?;

    let bus = test_support::TestEmbeddedBus::new(Topology::default()).await;
    let app = ssak3_reservation::App::build(
        &db.config(),
        &ssak3_reservation::Settings::default(),
        bus.bus.clone(),
    )
    .await?;
    let service = Running::spawn(app.local_addr()?, |shutdown| app.run(shutdown));
    service.wait_until(ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(service.health().await, Some(ServingStatus::NotServing));

    blocker.batch_execute("COMMIT")?;
    service.wait_until(ServingStatus::Serving).await;
    service.stop().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_and_then_closes_the_port() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    mesh.gateway.set_behaviour(GatewayConfig {
        latency_ms: 500,
        ..GatewayConfig::default()
    });
    let mut client = mesh.reservations().await;
    let in_flight = tokio::spawn(async move {
        client
            .create_reservation(as_user("alice", Role::Customer, booking("drain")))
            .await
    });
    eventually_within(
        Duration::from_secs(5),
        "the call reaches payment",
        || async { (mesh.gateway.charges_attempted() == 1).then_some(()) },
    )
    .await;

    let addr = mesh.reservation.addr;
    let stopping = tokio::spawn(mesh.reservation.stop());
    let finished = in_flight.await??.into_inner();
    assert_eq!(finished.state(), pb::ReservationState::Confirmed);
    stopping.await??;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );
    Ok(())
}
