//! Webhook delivery: once per notification, retried with backoff, given up
//! after the last attempt, every attempt recorded.

use std::time::Duration;

use ssak3_common::aggregate::Outcome;
use ssak3_common::{
    auth::Role,
    test_support::{Webhook, eventually},
};
use ssak3_notify::{
    config::EndpointConfig,
    domain::{DeliveryState, RetryPolicy},
    storage,
};

use crate::support::{COMPANY, CUSTOMER, Notify, TestResult, approved, completed};

#[tokio::test]
async fn each_notification_is_posted_once_with_its_idempotency_key() -> TestResult {
    let notify = Notify::start(3).await;
    for n in 0..3 {
        notify
            .publish(&approved(&format!("r-{n}"), CUSTOMER, COMPANY))
            .await;
    }
    let received = eventually("three deliveries", || async {
        Some(notify.webhook.received()).filter(|r| r.len() >= 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(notify.webhook.requests(), 3);
    for request in received {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok());
        assert_eq!(key, request.json["notification_id"].as_str());
        assert_eq!(request.json["kind"], "PAYMENT_APPROVED");
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_webhook_is_retried_until_it_accepts() -> TestResult {
    let notify = Notify::start(5).await;
    notify.webhook.fail_next(2);
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    let delivered = eventually("the delivery", || async {
        notify.webhook.delivered().into_iter().next()
    })
    .await;
    assert_eq!(
        notify.webhook.requests(),
        3,
        "two failures, then the delivery"
    );
    let db = notify.database();
    let stored = eventually("the delivery recorded", || async {
        let id = delivered.clone();
        let stored = db.read(move |c| storage::find(c, &id)).await.ok()??;
        (stored.delivery_state == DeliveryState::Delivered).then_some(stored)
    })
    .await;
    assert_eq!(stored.attempts, 3);
    assert_eq!(stored.last_error, None);
    Ok(())
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_given_up_after_the_last_attempt() -> TestResult {
    let notify = Notify::start(3).await;
    notify.webhook.fail_next(1_000);
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    let id = eventually("the notification stored", || async {
        let listed = notify.list(COMPANY, Role::Cleaner).await;
        listed.first().map(|n| n.notification_id.clone())
    })
    .await;
    let db = notify.database();
    let failed = eventually("the notification marked FAILED", || async {
        let id = id.clone();
        let stored = db.read(move |c| storage::find(c, &id)).await.ok()??;
        (stored.delivery_state == DeliveryState::Failed).then_some(stored)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        notify.webhook.requests(),
        3,
        "exactly max_attempts requests"
    );
    assert_eq!(failed.attempts, 3);
    assert!(failed.last_error.is_some_and(|e| e.contains("503")));
    Ok(())
}

#[tokio::test]
async fn deliveries_carry_a_signature_the_endpoint_verifies() -> TestResult {
    let notify = Notify::start(3).await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    let received = eventually("the delivery", || async {
        notify.webhook.received().into_iter().next()
    })
    .await;
    assert_eq!(
        notify.webhook.unverified(),
        0,
        "the signature did not verify"
    );
    let header = |name: &str| {
        received
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header("webhook-id").as_deref(),
        received.json["notification_id"].as_str()
    );
    assert!(header("webhook-signature").is_some_and(|s| s.starts_with("v1,")));
    assert!(header("webhook-timestamp").is_some_and(|t| t.parse::<i64>().is_ok()));
    Ok(())
}

#[tokio::test]
async fn a_delivery_signed_with_another_secret_does_not_verify() -> TestResult {
    let webhook = Webhook::start().await;
    let impostor = Webhook::start().await.secret();
    let notify = Notify::start_with(webhook, |settings| {
        settings.notify.webhook_secret = Some(impostor);
    })
    .await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    eventually("the delivery", || async {
        (notify.webhook.requests() > 0).then_some(())
    })
    .await;
    assert_eq!(notify.webhook.unverified(), 1);
    Ok(())
}

/// The companies' endpoint hangs; the customers' answers at once: the
/// customers' deliveries go through while the companies' fill only their
/// own slots (`webhook_concurrency` at once, no more).
#[tokio::test]
async fn a_hung_endpoint_holds_up_only_its_own_deliveries() -> TestResult {
    let companies = Webhook::start().await;
    companies.delay(Duration::from_secs(60));
    let customers = Webhook::start().await;
    let endpoint = |webhook: &Webhook, role: &str| EndpointConfig {
        url: webhook.url(),
        secret: Some(webhook.secret()),
        recipients: vec![role.to_owned()],
        ..EndpointConfig::default()
    };
    let (for_companies, for_customers) = (
        endpoint(&companies, "cleaner"),
        endpoint(&customers, "customer"),
    );
    let notify = Notify::start_with(companies.clone(), |settings| {
        settings.notify.webhook_url = None;
        settings.notify.webhook_secret = None;
        settings.notify.webhook_timeout_ms = 60_000;
        settings.notify.webhook_concurrency = 4;
        settings.notify.webhooks = [
            ("companies".to_owned(), for_companies),
            ("customers".to_owned(), for_customers),
        ]
        .into();
    })
    .await;
    for n in 0..10 {
        notify
            .publish(&approved(&format!("r-{n}"), CUSTOMER, COMPANY))
            .await;
    }
    eventually("the companies' endpoint busy", || async {
        (companies.requests() == 4).then_some(())
    })
    .await;
    notify.publish(&completed("r-0", CUSTOMER, COMPANY)).await;
    let delivered = eventually("the customer's notification", || async {
        customers.received().into_iter().next()
    })
    .await;
    assert_eq!(delivered.json["kind"], "CLEANING_COMPLETED");
    assert_eq!(customers.unverified(), 0);
    assert_eq!(
        companies.requests(),
        4,
        "more in flight than the endpoint's slots"
    );
    assert!(
        companies.received().is_empty(),
        "the hung endpoint answered"
    );
    Ok(())
}

/// Two replicas deliver from one table: each notification is POSTed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_post_each_notification_once() -> TestResult {
    let webhook = Webhook::start().await;
    webhook.delay(Duration::from_millis(300));
    let notify = Notify::start_with(webhook, |settings| {
        settings.notify.webhook_concurrency = 2;
    })
    .await;
    let _second = notify.replica().await;
    for n in 0..12 {
        notify
            .publish(&approved(&format!("r-{n}"), CUSTOMER, COMPANY))
            .await;
    }
    eventually("every delivery", || async {
        (notify.webhook.delivered().len() >= 12).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut ids = notify.webhook.delivered();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert_eq!(
        notify.webhook.requests(),
        12,
        "a notification was POSTed twice"
    );
    Ok(())
}

/// A replica claimed deliveries and died: they wait out its claim, then
/// another replica delivers them.
#[tokio::test]
async fn a_dead_replicas_deliveries_are_taken_over_when_its_claim_runs_out() -> TestResult {
    let webhook = Webhook::start().await;
    webhook.fail_next(1_000);
    let notify = Notify::start_with(webhook, |settings| {
        settings.notify.max_attempts = 1_000;
        settings.notify.retry_base_ms = 60_000;
        settings.notify.retry_max_ms = 60_000;
    })
    .await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    // The first attempt fails; the retry is an hour away. A "dead replica"
    // claims it as soon as it is due, for a second.
    let id = eventually("the first attempt", || async {
        notify
            .list(COMPANY, Role::Cleaner)
            .await
            .first()
            .map(|n| n.notification_id.clone())
    })
    .await;
    let db = notify.database();
    // Wait until this replica recorded the failed attempt (and gave up its
    // own claim), so that what follows is the only claim in play.
    eventually("the first attempt recorded", || {
        let (db, id) = (db.clone(), id.clone());
        async move {
            db.read(move |c| storage::find(c, &id))
                .await
                .ok()
                .flatten()
                .filter(|n| n.attempts >= 1)
        }
    })
    .await;
    let due = chrono::Utc::now() + chrono::TimeDelta::hours(2);
    let claimed = db
        .write(move |c| {
            storage::claim_due(
                c,
                "default",
                10,
                due.naive_utc(),
                (due + chrono::TimeDelta::seconds(1)).naive_utc(),
            )
        })
        .await?;
    assert_eq!(claimed.len(), 1);
    let again = db
        .write(move |c| storage::claim_due(c, "default", 10, due.naive_utc(), due.naive_utc()))
        .await?;
    assert!(again.is_empty(), "a live claim was taken");
    let expired = due + chrono::TimeDelta::seconds(2);
    let taken = db
        .write(move |c| {
            storage::claim_due(c, "default", 10, expired.naive_utc(), expired.naive_utc())
        })
        .await?;
    assert_eq!(taken.first().map(|n| n.notification_id.clone()), Some(id));
    Ok(())
}

/// An https:// endpoint whose certificate a CA of the operator's own signed.
#[tokio::test]
async fn https_endpoints_are_delivered_to_with_a_ca_of_their_own() -> TestResult {
    let (webhook, ca) = Webhook::start_tls().await;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca)?;
    assert!(webhook.url().starts_with("https://"));
    let notify = Notify::start_with(webhook, |settings| {
        settings.notify.webhook_ca_file = Some(ca_file);
    })
    .await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    let delivered = eventually("the delivery over TLS", || async {
        notify.webhook.received().into_iter().next()
    })
    .await;
    assert_eq!(delivered.json["kind"], "PAYMENT_APPROVED");
    assert_eq!(notify.webhook.unverified(), 0);
    Ok(())
}

/// A replica whose claim ran out while it was delivering: another replica
/// took the row, so the first one's outcome is not recorded and does not
/// give up the second one's claim (a third replica cannot take the row
/// while the second is still delivering it).
#[tokio::test]
async fn a_replica_whose_claim_ran_out_leaves_the_new_claim_alone() -> TestResult {
    let webhook = Webhook::start().await;
    webhook.fail_next(1_000);
    let notify = Notify::start_with(webhook, |settings| {
        settings.notify.max_attempts = 1_000;
        settings.notify.retry_base_ms = 60_000;
        settings.notify.retry_max_ms = 60_000;
    })
    .await;
    notify.publish(&approved("r-1", CUSTOMER, COMPANY)).await;
    let db = notify.database();
    let id = eventually("the first attempt recorded", || {
        let db = db.clone();
        let notify = &notify;
        async move {
            let id = notify
                .list(COMPANY, Role::Cleaner)
                .await
                .first()
                .map(|n| n.notification_id.clone())?;
            db.read(move |c| storage::find(c, &id))
                .await
                .ok()
                .flatten()
                .filter(|n| n.attempts >= 1)
                .map(|n| n.notification_id)
        }
    })
    .await;
    let at = |secs: i64| {
        (chrono::Utc::now() + chrono::TimeDelta::hours(2)).naive_utc()
            + chrono::TimeDelta::seconds(secs)
    };
    let (first_claim, second_claim) = (at(1), at(60));
    // Replica A claims it for a second; its claim runs out and B takes it.
    let mut by_a = db
        .write(move |c| storage::claim_due(c, "default", 10, at(0), first_claim))
        .await?;
    let by_b = db
        .write(move |c| storage::claim_due(c, "default", 10, at(2), second_claim))
        .await?;
    assert_eq!(by_b.len(), 1, "the run-out claim is taken over");
    // A's delivery comes back: delivered, but under a claim that is no longer in play.
    let policy = RetryPolicy {
        max_attempts: 1_000,
        base: Duration::from_secs(60),
        max: Duration::from_secs(60),
    };
    let notification = by_a.pop().expect("A claimed the notification");
    assert_eq!(notification.notification_id, id);
    let Outcome::Move(late) = notification.attempted(Ok(()), &policy, chrono::Utc::now()) else {
        panic!("a delivered attempt moves the notification");
    };
    let recorded = db
        .write(move |c| storage::apply(c, &late, first_claim))
        .await?;
    assert!(!recorded, "an outcome under a run-out claim was recorded");
    let by_c = db
        .write(move |c| storage::claim_due(c, "default", 10, at(3), at(90)))
        .await?;
    assert!(by_c.is_empty(), "B's live claim was given up by A");
    let stored = db
        .read(move |c| storage::find(c, &id))
        .await?
        .expect("stored");
    assert_eq!(stored.delivery_state, DeliveryState::Pending);
    Ok(())
}
