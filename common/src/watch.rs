//! Live streams that resume with nothing missed and nothing sent twice
//! (`WatchNotifications`, `WatchMyReservations`).
//!
//! Every item a subscriber ("owner") sees has a **position**: an instant that
//! the change takes from [`next_position`] in the transaction that stores it.
//! The owner's row in `change_clock` stays locked until that transaction
//! commits, so one owner's positions grow strictly and in commit order: once
//! a change at position `p` is visible, so is every earlier change of that
//! owner. Positions are what the API shows as `create_time` (notifications)
//! and `update_time` (my page views), and what a watch resumes after.
//!
//! The same transaction marks the change for the live streams
//! ([`crate::changes::Changes::mark`]): every replica hears of it once it
//! commits, and wakes the watchers of that owner ([`crate::live`]).
//!
//! [`resume`] serves a watch from a position. Its caller subscribes to the
//! wake-ups first; then the store is read for what came after the position,
//! and from then on every wake-up at a position beyond the last one sent
//! (and every resync) makes it read the store again from there. A wake-up
//! only says "something of yours changed"; the store says what, in order.
//! Whatever was committed before the subscription is in the first read,
//! whatever after it wakes the watcher, and the position sent only moves
//! forward: no gap, no duplicate, in order, whatever the order of the
//! wake-ups and whichever replica stored the change. A feed that cuts a
//! slow watcher off ends the stream with the status it gives; the watcher
//! resumes from the last item it received.

use std::future::Future;

use chrono::{NaiveDateTime, TimeDelta};
use diesel::{
    prelude::*,
    sql_types::{Text, Timestamp},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tonic::Status;

use crate::{
    db::{DbConnection, multi_row, rows},
    live::Wake,
    time,
};

diesel::table! {
    /// The last position given out per owner (see the services' migrations).
    change_clock (owner) {
        owner -> Text,
        position -> Timestamp,
    }
}

/// Where a change stands in its owners' streams (UTC, microseconds).
pub type Position = NaiveDateTime;

/// The position before every other.
pub fn origin() -> Position {
    chrono::DateTime::UNIX_EPOCH.naive_utc()
}

/// Takes the position of a change that every one of `owners` will see: the
/// current instant, or just after the last position any of them was given if
/// that is not earlier. Call it in the transaction that stores the change; it
/// locks the owners' clock rows until that transaction ends.
pub fn next_position(conn: &mut DbConnection, owners: &[&str]) -> QueryResult<Position> {
    Ok(next_positions(conn, &[owners])?[0])
}

/// [`next_position`] for several changes stored in one transaction, change
/// `i` being seen by the owners `changes[i]`: their positions, in order
/// (one owner's grow strictly in that order). Two statements however many
/// changes: the owners' clock rows are created or locked (in the order of
/// the owners, so two transactions cannot deadlock on them), then moved on.
pub fn next_positions<S, O>(conn: &mut DbConnection, changes: &[S]) -> QueryResult<Vec<Position>>
where
    S: AsRef<[O]>,
    O: AsRef<str>,
{
    #[derive(QueryableByName)]
    struct Clock {
        #[diesel(sql_type = Text)]
        owner: String,
        #[diesel(sql_type = Timestamp)]
        position: Position,
    }
    let mut owners: Vec<&str> = changes
        .iter()
        .flat_map(|change| change.as_ref().iter().map(AsRef::as_ref))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    let now = time::now().naive_utc();
    if owners.is_empty() {
        return Ok(vec![now; changes.len()]);
    }
    let count = owners.len();
    // Creates the rows, or (the no-op update) locks them on PostgreSQL;
    // SQLite has a single writer already.
    let lock = format!(
        "INSERT INTO change_clock (owner, position) VALUES {} \
         ON CONFLICT (owner) DO UPDATE SET position = change_clock.position \
         RETURNING owner, position",
        rows(count, 2, 1)
    );
    let lock = owners
        .iter()
        .fold(multi_row(lock, count), |statement, owner| {
            statement
                .bind::<Text, _>(*owner)
                .bind::<Timestamp, _>(origin())
        });
    let mut last = std::collections::HashMap::with_capacity(count);
    for clock in lock.load::<Clock>(conn)? {
        if let Ok(at) = owners.binary_search(&clock.owner.as_str()) {
            last.insert(owners[at], clock.position);
        }
    }
    let positions = changes
        .iter()
        .map(|change| {
            let change = change.as_ref();
            let after = change.iter().filter_map(|o| last.get(o.as_ref())).max();
            let position = match after {
                Some(&last) if last >= now => last + TimeDelta::microseconds(1),
                _ => now,
            };
            for owner in change {
                last.insert(owner.as_ref(), position);
            }
            position
        })
        .collect();
    let store = format!(
        "INSERT INTO change_clock (owner, position) VALUES {} \
         ON CONFLICT (owner) DO UPDATE SET position = excluded.position",
        rows(count, 2, 1)
    );
    owners
        .iter()
        .fold(multi_row(store, count), |statement, owner| {
            statement
                .bind::<Text, _>(*owner)
                .bind::<Timestamp, _>(last[owner])
        })
        .execute(conn)?;
    Ok(positions)
}

/// The last position given out to `owner` (the origin if none yet): where a
/// watch "from now on" starts.
pub fn last_position(conn: &mut DbConnection, owner: &str) -> QueryResult<Position> {
    Ok(change_clock::table
        .find(owner)
        .select(change_clock::position)
        .first(conn)
        .optional()?
        .unwrap_or_else(origin))
}

/// A live feed of wake-ups or errors (such as a `live::Subscription`),
/// with what an error tells the watcher.
pub fn live_from<E>(
    feed: impl Stream<Item = Result<Wake, E>> + Send + Unpin + 'static,
    cut_off: impl Fn(E) -> Status + Send + 'static,
) -> impl Stream<Item = Result<Wake, Status>> + Send + Unpin + 'static {
    feed.map(move |wake| wake.map_err(&cut_off))
}

/// Items read from the store per query.
const REPLAY_PAGE: i64 = 256;

/// How a watch reads its owner's items.
pub struct Source<T, R> {
    /// The position of an item.
    pub position: fn(&T) -> Position,
    /// The owner's stored items after a position, in position order, at most
    /// `limit` of them.
    pub replay: R,
}

/// Streams the owner's items after `start`, then each one stored later, as
/// `live` wakes it (it must have been subscribed to before this is called).
/// Ends when the caller goes away or the feed closes; a store error or a
/// cut-off (an error on the feed) ends it with that status.
pub fn resume<T, L, R, Fut>(
    live: L,
    start: Position,
    source: Source<T, R>,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    L: Stream<Item = Result<Wake, Status>> + Send + Unpin + 'static,
    R: Fn(Position, i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<T>, Status>> + Send,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut live = live;
        let mut sent = start;
        if catch_up(&tx, &source, &mut sent).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = live.next() => next,
            };
            let behind = match next {
                None => return,
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                // Already sent (read with an earlier wake-up) costs no read.
                Some(Ok(Wake::Changed(at))) => at > sent,
                Some(Ok(Wake::Resync)) => true,
            };
            if behind && catch_up(&tx, &source, &mut sent).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Sends what the store holds after `sent`, moving `sent` along; `Err` when
/// the watcher is gone or the store failed (the error is sent).
async fn catch_up<T, R, Fut>(
    tx: &mpsc::Sender<Result<T, Status>>,
    source: &Source<T, R>,
    sent: &mut Position,
) -> Result<(), ()>
where
    R: Fn(Position, i64) -> Fut,
    Fut: Future<Output = Result<Vec<T>, Status>>,
{
    loop {
        let page = match (source.replay)(*sent, REPLAY_PAGE).await {
            Ok(page) => page,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return Err(());
            }
        };
        let full = page.len() >= usize::try_from(REPLAY_PAGE).unwrap_or(usize::MAX);
        for item in page {
            let at = (source.position)(&item);
            if at <= *sent {
                continue;
            }
            *sent = at;
            tx.send(Ok(item)).await.map_err(drop)?;
        }
        if !full {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use diesel::{Connection as _, SqliteConnection, connection::SimpleConnection as _};

    use super::*;

    /// A live feed for the tests: what is sent on it arrives in order.
    struct Feed(mpsc::UnboundedSender<Result<Wake, &'static str>>);

    impl Feed {
        fn new() -> (
            Self,
            impl Stream<Item = Result<Wake, Status>> + Send + Unpin + 'static,
        ) {
            let (tx, rx) = mpsc::unbounded_channel();
            let live = live_from(
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                Status::resource_exhausted,
            );
            (Self(tx), live)
        }

        fn changed(&self, position: Position) {
            let _ = self.0.send(Ok(Wake::Changed(position)));
        }

        fn resync(&self) {
            let _ = self.0.send(Ok(Wake::Resync));
        }

        fn cut_off(&self) {
            let _ = self.0.send(Err("fell behind"));
        }
    }

    /// An item of the test store: its owner and position.
    type Item = (&'static str, Position);

    fn at(micros: i64) -> Position {
        origin() + TimeDelta::microseconds(micros)
    }

    /// What the test store's replay is.
    trait TestReplay:
        Fn(Position, i64) -> std::future::Ready<Result<Vec<Item>, Status>> + Send + Sync + 'static
    {
    }

    impl<F> TestReplay for F where
        F: Fn(Position, i64) -> std::future::Ready<Result<Vec<Item>, Status>>
            + Send
            + Sync
            + 'static
    {
    }

    /// A store of items and a way to count its reads.
    #[derive(Clone, Default)]
    struct Store {
        items: Arc<Mutex<Vec<Item>>>,
        reads: Arc<Mutex<usize>>,
    }

    impl Store {
        fn put(&self, item: Item) {
            self.items
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(item);
        }

        fn source(&self, owner: &'static str) -> Source<Item, impl TestReplay> {
            let store = self.clone();
            Source {
                position: |item: &Item| item.1,
                replay: move |after, limit| {
                    *store.reads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    let mut items: Vec<Item> = store
                        .items
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .filter(|(o, p)| *o == owner && *p > after)
                        .copied()
                        .collect();
                    items.sort_by_key(|(_, p)| *p);
                    items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                    std::future::ready(Ok(items))
                },
            }
        }

        fn reads(&self) -> usize {
            *self.reads.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    async fn next_items(
        stream: &mut ReceiverStream<Result<Item, Status>>,
        count: usize,
    ) -> Vec<Position> {
        let mut positions = Vec::new();
        for _ in 0..count {
            let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap_or_else(|_| panic!("no item after {positions:?}"))
                .unwrap_or_else(|| panic!("stream ended after {positions:?}"))
                .unwrap_or_else(|status| panic!("{status:?}"));
            positions.push(item.1);
        }
        positions
    }

    /// Nothing more arrives for a moment.
    async fn quiet(stream: &mut ReceiverStream<Result<Item, Status>>) {
        let more = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
        assert!(more.is_err(), "unexpected {more:?}");
    }

    #[tokio::test]
    async fn replays_what_came_after_the_start_then_goes_live_without_duplicates() {
        let store = Store::default();
        for micros in [1, 2, 3] {
            store.put(("alice", at(micros)));
        }
        store.put(("bob", at(4)));
        let (feed, live) = Feed::new();
        // Committed before the watch read the store, announced after it.
        store.put(("alice", at(5)));
        let mut stream = resume(live, at(1), store.source("alice"));
        assert_eq!(next_items(&mut stream, 3).await, [at(2), at(3), at(5)]);
        feed.changed(at(5));
        quiet(&mut stream).await;
        store.put(("alice", at(6)));
        feed.changed(at(6));
        assert_eq!(next_items(&mut stream, 1).await, [at(6)]);
        quiet(&mut stream).await;
    }

    #[tokio::test]
    async fn wake_ups_out_of_order_send_the_items_in_order_once() {
        let store = Store::default();
        let (feed, live) = Feed::new();
        let mut stream = resume(live, at(0), store.source("alice"));
        quiet(&mut stream).await;
        // Two changes commit in order; the later one is announced first.
        store.put(("alice", at(7)));
        store.put(("alice", at(8)));
        feed.changed(at(8));
        assert_eq!(next_items(&mut stream, 2).await, [at(7), at(8)]);
        feed.changed(at(7));
        quiet(&mut stream).await;
    }

    #[tokio::test]
    async fn a_wake_up_for_what_was_sent_costs_no_read_and_a_cut_off_ends_the_stream() {
        let store = Store::default();
        let (feed, live) = Feed::new();
        let mut stream = resume(live, at(0), store.source("alice"));
        quiet(&mut stream).await;
        store.put(("alice", at(1)));
        store.put(("alice", at(2)));
        feed.changed(at(1));
        assert_eq!(next_items(&mut stream, 2).await, [at(1), at(2)]);
        let reads = store.reads();
        feed.changed(at(2));
        quiet(&mut stream).await;
        assert_eq!(store.reads(), reads);
        feed.cut_off();
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        let code = ended.ok().flatten().and_then(Result::err).map(|s| s.code());
        assert_eq!(code, Some(tonic::Code::ResourceExhausted));
        let after = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        assert!(matches!(after, Ok(None)), "the stream goes on: {after:?}");
    }

    #[tokio::test]
    async fn a_resync_reads_again_and_sends_only_what_it_had_not_sent() {
        let store = Store::default();
        let (feed, live) = Feed::new();
        store.put(("alice", at(1)));
        let mut stream = resume(live, at(0), store.source("alice"));
        assert_eq!(next_items(&mut stream, 1).await, [at(1)]);
        // Stored while the signals were not heard: nothing wakes the watcher.
        store.put(("alice", at(2)));
        store.put(("alice", at(3)));
        quiet(&mut stream).await;
        let reads = store.reads();
        feed.resync();
        assert_eq!(next_items(&mut stream, 2).await, [at(2), at(3)]);
        assert!(store.reads() > reads, "a resync reads the store");
        feed.resync();
        quiet(&mut stream).await;
        store.put(("alice", at(4)));
        feed.changed(at(4));
        assert_eq!(next_items(&mut stream, 1).await, [at(4)]);
        quiet(&mut stream).await;
    }

    #[tokio::test]
    async fn a_long_backlog_is_replayed_page_by_page() {
        let store = Store::default();
        let count = REPLAY_PAGE * 2 + 3;
        for micros in 1..=count {
            store.put(("alice", at(micros)));
        }
        let (_feed, live) = Feed::new();
        let mut stream = resume(live, at(0), store.source("alice"));
        let sent = next_items(&mut stream, usize::try_from(count).unwrap_or(0)).await;
        assert_eq!(sent, (1..=count).map(at).collect::<Vec<_>>());
        quiet(&mut stream).await;
    }

    fn clock_db() -> DbConnection {
        let mut conn = SqliteConnection::establish(":memory:").unwrap_or_else(|e| panic!("{e}"));
        conn.batch_execute(
            "CREATE TABLE change_clock (owner TEXT PRIMARY KEY, position TIMESTAMP NOT NULL)",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        DbConnection::Sqlite(conn)
    }

    #[test]
    fn positions_grow_strictly_per_owner_and_a_shared_change_passes_both() -> QueryResult<()> {
        let mut conn = clock_db();
        assert_eq!(last_position(&mut conn, "customer:alice")?, origin());
        let mut previous = origin();
        for _ in 0..50 {
            let next = next_position(&mut conn, &["customer:alice"])?;
            assert!(next > previous, "{next} after {previous}");
            previous = next;
        }
        assert_eq!(last_position(&mut conn, "customer:alice")?, previous);
        // The company's clock starts now, but a change both see comes after
        // everything either has seen.
        let shared = next_position(&mut conn, &["cleaner:acme", "customer:alice"])?;
        assert!(shared > previous);
        assert_eq!(last_position(&mut conn, "cleaner:acme")?, shared);
        assert!(next_position(&mut conn, &["cleaner:acme"])? > shared);
        Ok(())
    }

    /// Changes taken together get what they would one after the other: each
    /// owner's positions grow strictly, through the call and after it.
    #[test]
    fn positions_taken_together_grow_strictly_per_owner() -> QueryResult<()> {
        let mut conn = clock_db();
        let changes: [&[&str]; 5] = [
            &["customer:alice"],
            &["cleaner:acme", "customer:alice"],
            &["customer:bob"],
            &["cleaner:acme", "customer:bob"],
            &["cleaner:acme"],
        ];
        let positions = next_positions(&mut conn, &changes)?;
        for owner in ["customer:alice", "customer:bob", "cleaner:acme"] {
            let seen: Vec<Position> = changes
                .iter()
                .zip(&positions)
                .filter(|(change, _)| change.contains(&owner))
                .map(|(_, &position)| position)
                .collect();
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "{owner}: {seen:?}");
            let last = seen.last().copied().unwrap_or_else(origin);
            assert_eq!(last_position(&mut conn, owner)?, last, "{owner}");
        }
        assert!(next_position(&mut conn, &["cleaner:acme"])? > positions[4]);
        assert_eq!(
            next_positions(&mut conn, &[[""; 0]])?.len(),
            1,
            "no owner: now"
        );
        Ok(())
    }
}
