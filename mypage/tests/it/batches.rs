//! Events applied in one batch store what the same events applied one
//! after the other store: on PostgreSQL, where consumers batch, and on
//! SQLite.

use ssak3_common::{
    changes::Changes,
    db::{Database, DatabaseUrl},
    ids::CompanyId,
    test_support::TestDb,
    watch,
};
use ssak3_mypage::storage::{self, Owner};
use ssak3_proto::{events::v1::Event, mypage::v1 as pb};

use crate::support::{COMPANY, TestResult, refunded_story};

async fn database(test_db: &TestDb) -> anyhow::Result<(Database, Changes)> {
    let url = DatabaseUrl::parse(&test_db.url())?;
    let db = Database::connect(&url, 2)?;
    db.migrate(storage::SCHEMA).await?;
    Ok((db, Changes::start(&url, "mypage_batch_test")))
}

/// The views of `ids`, without the time each was stored.
async fn views(db: &Database, ids: &[&str]) -> anyhow::Result<Vec<Option<pb::ReservationView>>> {
    let mut views = Vec::new();
    for id in ids {
        let id = ssak3_common::ids::ReservationId::parse(id)?;
        let view = db.read(move |c| storage::find(c, &id)).await?;
        views.push(view.map(|view| pb::ReservationView {
            update_time: None,
            ..view
        }));
    }
    Ok(views)
}

async fn one_batch_stores_what_one_by_one_stores(test_db: fn() -> TestDb) -> TestResult {
    // Three reservations of one company: two whole stories and the first
    // event of a third, with a redelivery inside the batch.
    let mut events: Vec<Event> = refunded_story("r-1", "alice", COMPANY);
    events.extend(refunded_story("r-2", "bob", COMPANY));
    events.push(refunded_story("r-3", "carol", COMPANY).remove(0));
    events.push(events[1].clone());
    let (batched_db, one_by_one_db) = (test_db(), test_db());
    let (batched, changes) = database(&batched_db).await?;
    let applied = {
        let events = events.clone();
        batched
            .transaction(move |c| storage::apply_all(c, &changes, &events))
            .await?
    };
    // One change per reservation, with the first of its events; the
    // redelivery changes nothing.
    let changed: Vec<bool> = applied.iter().map(Option::is_some).collect();
    assert_eq!(
        changed,
        [true, false, false, true, false, false, true, false],
        "{applied:?}"
    );
    let (one_by_one, changes) = database(&one_by_one_db).await?;
    for event in &events {
        let (event, changes) = (event.clone(), changes.clone());
        one_by_one
            .transaction(move |c| storage::apply_all(c, &changes, &[event]))
            .await?;
    }
    let ids = ["r-1", "r-2", "r-3"];
    let expected = views(&one_by_one, &ids).await?;
    assert!(expected.iter().all(Option::is_some));
    assert_eq!(views(&batched, &ids).await?, expected);
    // The company sees the three changes, each at a position of its own.
    let company = Owner::Company(CompanyId::parse(COMPANY)?);
    let changed = batched
        .read(move |c| storage::changed_after(c, &company, watch::origin(), 10))
        .await?;
    let mut times: Vec<_> = changed
        .iter()
        .map(|view| view.update_time.map(|t| (t.seconds, t.nanos)))
        .collect();
    times.dedup();
    assert_eq!(times.len(), 3, "{changed:?}");
    // Applying the batch again changes nothing.
    let (again, changes) = (
        events.clone(),
        Changes::start(&DatabaseUrl::parse(&batched_db.url())?, "mypage_batch_test"),
    );
    let applied = batched
        .transaction(move |c| storage::apply_all(c, &changes, &again))
        .await?;
    assert!(applied.iter().all(Option::is_none), "{applied:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_events_stores_what_one_by_one_stores_on_postgres() -> TestResult {
    one_batch_stores_what_one_by_one_stores(TestDb::postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_events_stores_what_one_by_one_stores_on_sqlite() -> TestResult {
    one_batch_stores_what_one_by_one_stores(TestDb::sqlite).await
}
