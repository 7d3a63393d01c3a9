//! Replicas on one PostgreSQL database: a watcher on any of them sees what
//! another stored, once and in order, also when the listener that hears the
//! other's commits lost its connection.

use std::{net::SocketAddr, time::Duration};

use ssak3_common::{
    auth::Role,
    test_support::{as_user, channel},
};
use ssak3_proto::notify::v1::{self as pb, notification_service_client::NotificationServiceClient};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::support::{COMPANY, CUSTOMER, Notify, TestResult, approved};

async fn watch(addr: SocketAddr, resume_point: Option<&str>) -> Streaming<pb::Notification> {
    let request = pb::WatchNotificationsRequest {
        resume_point: resume_point.map(|id| {
            pb::watch_notifications_request::ResumePoint::AfterNotificationId(id.to_owned())
        }),
    };
    NotificationServiceClient::new(channel(addr).await)
        .watch_notifications(as_user(COMPANY, Role::Cleaner, request))
        .await
        .expect("a watch")
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::Notification>, count: usize) -> Vec<pb::Notification> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("nothing more after {} items", seen.len()))
            .expect("the stream stays open")
            .expect("an item");
        seen.push(item);
    }
    seen
}

/// Nothing more arrives for a moment.
async fn quiet(stream: &mut Streaming<pb::Notification>) {
    let more = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(more.is_err(), "unexpected {more:?}");
}

fn reservations(seen: &[pb::Notification]) -> Vec<String> {
    let mut ids: Vec<String> = seen.iter().map(|n| n.reservation_id.clone()).collect();
    ids.sort();
    ids
}

fn assert_in_order(seen: &[pb::Notification]) {
    let times: Vec<_> = seen
        .iter()
        .map(|n| n.create_time.map(|t| (t.seconds, t.nanos)))
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "out of order: {times:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_what_another_stored() -> TestResult {
    let notify = Notify::start_on_postgres().await;
    let (idle, _its_bus) = notify.idle_replica().await;
    let mut stream = watch(idle.addr, None).await;
    for n in 0..5 {
        notify
            .publish(&approved(&format!("r-{n}"), CUSTOMER, COMPANY))
            .await;
    }
    let seen = next(&mut stream, 5).await;
    assert_eq!(
        reservations(&seen),
        ["r-0", "r-1", "r-2", "r-3", "r-4"],
        "each once"
    );
    assert_in_order(&seen);
    quiet(&mut stream).await;

    // A watch resumed on the idle replica replays from the store what came after.
    let mut resumed = watch(idle.addr, Some(&seen[2].notification_id)).await;
    let replayed = next(&mut resumed, 2).await;
    assert_eq!(
        replayed
            .iter()
            .map(|n| &n.notification_id)
            .collect::<Vec<_>>(),
        seen[3..]
            .iter()
            .map(|n| &n.notification_id)
            .collect::<Vec<_>>()
    );
    quiet(&mut resumed).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_listener_reconnects_a_watcher_reads_again_and_repeats_nothing() -> TestResult {
    let notify = Notify::start_on_postgres().await;
    let (idle, _its_bus) = notify.idle_replica().await;
    let mut stream = watch(idle.addr, None).await;
    notify.publish(&approved("r-0", CUSTOMER, COMPANY)).await;
    let mut seen = next(&mut stream, 1).await;

    // Stored while the listeners reconnect: heard through their resync, or
    // after it, never twice.
    assert!(
        notify.test_db().terminate_change_listeners() >= 2,
        "both replicas listen"
    );
    for n in 1..4 {
        notify
            .publish(&approved(&format!("r-{n}"), CUSTOMER, COMPANY))
            .await;
    }
    seen.extend(next(&mut stream, 3).await);
    assert_eq!(reservations(&seen), ["r-0", "r-1", "r-2", "r-3"]);
    assert_in_order(&seen);
    quiet(&mut stream).await;

    // And it listens again.
    notify.publish(&approved("r-4", CUSTOMER, COMPANY)).await;
    let last = next(&mut stream, 1).await;
    assert_eq!(last[0].reservation_id, "r-4");
    quiet(&mut stream).await;
    Ok(())
}
