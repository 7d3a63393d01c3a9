//! A database written by the first release migrates to today's schema with
//! its data intact: cancellations recorded before any charge (which that
//! release stored with empty strings and 0) become payments without an order.

use diesel::{RunQueryDsl as _, sql_query};
use ssak3_common::{
    db::{Database, DatabaseUrl, DbConnection},
    ids::ReservationId,
    test_support::TestDb,
};
use ssak3_payment::{domain::PaymentState, storage};

use crate::support::TestResult;

const FIRST_RELEASE: &str = "20261123000001";

fn first_release_schema(backend: &str) -> String {
    let path = format!(
        "{}/migrations/{backend}/2026-11-23-000001_create_payments/up.sql",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path).expect("the first migration is in the repository")
}

async fn upgrades(db: TestDb, backend: &str) -> TestResult {
    let database = Database::connect(&DatabaseUrl::parse(&db.url())?, 1)?;
    let schema = first_release_schema(backend);
    database
        .transaction(move |c: &mut DbConnection| {
            use diesel::connection::SimpleConnection as _;
            c.batch_execute(&schema)?;
            c.batch_execute(
                "CREATE TABLE __diesel_schema_migrations (
                     version VARCHAR(50) PRIMARY KEY NOT NULL,
                     run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
            )?;
            sql_query(format!(
                "INSERT INTO __diesel_schema_migrations (version) VALUES ('{FIRST_RELEASE}')"
            ))
            .execute(c)?;
            sql_query(
                "INSERT INTO payments VALUES
                 ('p-early', 'r-early', '', '', '', NULL, 0, 'KRW', 'CANCELLED', NULL,
                  '2026-11-23 10:00:00', '2026-11-23 10:00:00'),
                 ('p-paid', 'r-paid', 'alice', 'acme-cleaning', '12 Gangnam-daero', '2026-11-25 10:00:00',
                  50000, 'KRW', 'APPROVED', NULL, '2026-11-23 10:00:00', '2026-11-23 10:00:00')",
            )
            .execute(c)?;
            Ok(())
        })
        .await?;

    database.migrate(storage::SCHEMA).await?;

    let find = |id: &'static str| {
        database.read(move |c| {
            storage::find_by_reservation_id(c, &ReservationId::parse(id).expect("valid"))
        })
    };
    let early = find("r-early").await?.expect("kept");
    assert_eq!(early.state, PaymentState::Cancelled);
    assert_eq!(early.order, None);
    assert_eq!(early.version, 1);
    let paid = find("r-paid").await?.expect("kept");
    let order = paid.order.expect("an order");
    assert_eq!(order.customer_id.as_str(), "alice");
    assert_eq!(order.amount.units(), 50_000);
    assert_eq!(paid.state, PaymentState::Approved);
    Ok(())
}

#[tokio::test]
async fn a_first_release_sqlite_database_upgrades() -> TestResult {
    upgrades(TestDb::sqlite(), "sqlite").await
}

#[tokio::test]
async fn a_first_release_postgres_database_upgrades() -> TestResult {
    upgrades(TestDb::postgres(), "postgres").await
}
