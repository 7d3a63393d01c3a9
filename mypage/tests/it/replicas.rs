//! Replicas on one PostgreSQL database: a watcher on any of them sees the
//! views another stored, for the customer and for the company, each change
//! once and in order.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use ssak3_common::{
    auth::Role,
    test_support::{as_user, channel},
};
use ssak3_proto::mypage::v1::{
    self as pb, ReservationStatus, my_page_service_client::MyPageServiceClient,
};
use tokio_stream::StreamExt as _;
use tonic::Streaming;

use crate::support::{COMPANY, CUSTOMER, MyPage, TestResult, refunded_story};

async fn watch(addr: SocketAddr, who: &str, role: Role) -> Streaming<pb::ReservationView> {
    MyPageServiceClient::new(channel(addr).await)
        .watch_my_reservations(as_user(
            who,
            role,
            pb::WatchMyReservationsRequest::default(),
        ))
        .await
        .expect("a watch")
        .into_inner()
}

/// What a stream sends until every reservation in `finals` reached its
/// final status there.
async fn until_final(
    stream: &mut Streaming<pb::ReservationView>,
    finals: &[&str],
) -> Vec<pb::ReservationView> {
    let mut seen: Vec<pb::ReservationView> = Vec::new();
    let mut last: HashMap<String, ReservationStatus> = HashMap::new();
    while !finals
        .iter()
        .all(|id| last.get(*id) == Some(&ReservationStatus::Refunded))
    {
        let view = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("not final after {last:?}"))
            .expect("the stream stays open")
            .expect("a view");
        last.insert(view.reservation_id.clone(), view.status());
        seen.push(view);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_replica_sees_the_views_another_stored() -> TestResult {
    let page = MyPage::start_on_postgres().await;
    let (idle, _its_bus) = page.idle_replica().await;
    let mut customer = watch(idle.addr, CUSTOMER, Role::Customer).await;
    let mut company = watch(idle.addr, COMPANY, Role::Cleaner).await;
    page.publish(&refunded_story("r-bob", "bob", "other-cleaning"))
        .await;
    for id in ["r-1", "r-2"] {
        page.publish(&refunded_story(id, CUSTOMER, COMPANY)).await;
    }
    for (stream, who) in [(&mut customer, CUSTOMER), (&mut company, COMPANY)] {
        let seen = until_final(stream, &["r-1", "r-2"]).await;
        assert!(
            seen.iter().all(|v| v.reservation_id != "r-bob"),
            "someone else's view reached {who}'s stream"
        );
        let times: Vec<_> = seen
            .iter()
            .map(|v| v.update_time.map(|t| (t.seconds, t.nanos)))
            .collect();
        assert!(
            times.windows(2).all(|pair| pair[0] < pair[1]),
            "{who}'s stream repeated a change or went back: {times:?}"
        );
        let more = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
        assert!(more.is_err(), "{who}'s stream went on: {more:?}");
    }
    Ok(())
}
