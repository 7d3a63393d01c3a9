//! Live streams of what is stored, by subscriber: a change wakes only the
//! watchers of its subscriber (an index, not a scan of every watcher), the
//! number of watchers is bounded in all and per subscriber, and a watcher
//! that falls behind is cut off rather than buffered without end.
//!
//! A watcher is told *that* its subscriber changed and at which position
//! ([`Wake`]), never what: it reads that from the store (see
//! [`crate::watch`]), so an item reaches it once and in order whichever
//! replica stored it. The wake-ups come from [`forward`], which hands on
//! the service's change signals ([`crate::changes`]): the commits of every
//! replica, not only of the one the watcher is connected to.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

use crate::{changes::Signal, watch::Position};

/// How many live streams a service holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamLimits {
    /// Streams open at once in one process.
    pub max_streams: usize,
    /// Streams open at once for one subscriber (a customer's devices).
    pub max_streams_per_subscriber: usize,
    /// Changes a stream may leave unread (its reader too slow to take what
    /// it is sent) before it is cut off.
    pub buffer: usize,
    /// The RetryInfo delay when a stream is refused for being over a limit.
    pub retry_after_ms: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_streams: 10_000,
            max_streams_per_subscriber: 8,
            buffer: 256,
            retry_after_ms: 5_000,
        }
    }
}

/// Why a stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many live streams are open; try again later")]
    Process { retry_after: Duration },
    #[error("this caller has too many live streams open; close one first")]
    Subscriber { retry_after: Duration },
}

impl From<Refused> for crate::ApiError {
    fn from(refused: Refused) -> Self {
        let (Refused::Process { retry_after } | Refused::Subscriber { retry_after }) = refused;
        crate::ApiError::ResourceExhausted {
            message: refused.to_string(),
            retry_after: Some(retry_after),
        }
    }
}

/// A live stream fell so far behind that it was cut off; list, then watch again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stream fell behind and was closed; watch again from the last item received")]
pub struct Lagged;

/// What wakes a watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Its subscriber has a change stored at this position.
    Changed(Position),
    /// Changes may have gone unheard: read the store again.
    Resync,
}

struct Watcher {
    id: u64,
    tx: mpsc::Sender<Wake>,
    lagged: Arc<AtomicBool>,
}

impl Watcher {
    /// Hands on `wake`; false when the watcher is gone, or cut off because
    /// it holds `buffer` wake-ups unread already.
    fn wake(&self, wake: Wake) -> bool {
        match self.tx.try_send(wake) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::SeqCst);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

struct State<K> {
    watchers: HashMap<K, Vec<Watcher>>,
    open: usize,
    next_id: u64,
}

/// The watchers of one process, by subscriber `K`.
pub struct Feed<K> {
    state: Arc<Mutex<State<K>>>,
    limits: StreamLimits,
}

impl<K> Clone for Feed<K> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            limits: self.limits.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Feed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("limits", &self.limits)
            .finish()
    }
}

impl<K> Feed<K>
where
    K: Eq + Hash + Clone + Send + 'static,
{
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                watchers: HashMap::new(),
                open: 0,
                next_id: 0,
            })),
            limits,
        }
    }

    /// A new stream of `subscriber`'s wake-ups, unless a limit is reached.
    pub fn subscribe(&self, subscriber: K) -> Result<Subscription<K>, Refused> {
        let retry_after = Duration::from_millis(self.limits.retry_after_ms);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.open >= self.limits.max_streams {
            return Err(Refused::Process { retry_after });
        }
        let mine = state.watchers.get(&subscriber).map_or(0, Vec::len);
        if mine >= self.limits.max_streams_per_subscriber {
            return Err(Refused::Subscriber { retry_after });
        }
        let (tx, rx) = mpsc::channel(self.limits.buffer.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let id = state.next_id;
        state.next_id += 1;
        state.open += 1;
        state
            .watchers
            .entry(subscriber.clone())
            .or_default()
            .push(Watcher {
                id,
                tx,
                lagged: Arc::clone(&lagged),
            });
        Ok(Subscription {
            rx,
            lagged,
            ended: false,
            leave: Some(Leave {
                state: Arc::clone(&self.state),
                subscriber,
                id,
            }),
        })
    }

    /// Wakes the streams of `subscriber`: it has a change at `position`.
    /// One that cannot take it (its reader is too slow) is cut off.
    pub fn wake<Q>(&self, subscriber: &Q, position: Position)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(watchers) = state.watchers.get_mut(subscriber) else {
            return;
        };
        let before = watchers.len();
        watchers.retain(|watcher| watcher.wake(Wake::Changed(position)));
        let removed = before - watchers.len();
        if watchers.is_empty() {
            state.watchers.remove(subscriber);
        }
        state.open -= removed;
    }

    /// Wakes every stream to read the store again (changes may have gone
    /// unheard); one that cannot take it is cut off.
    pub fn wake_all(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut removed = 0;
        state.watchers.retain(|_, watchers| {
            let before = watchers.len();
            watchers.retain(|watcher| watcher.wake(Wake::Resync));
            removed += before - watchers.len();
            !watchers.is_empty()
        });
        state.open -= removed;
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }
}

/// Hands the service's change signals to the watchers of this process
/// until `stop` turns true (or the signals end): a change wakes the
/// watchers of its subscriber; a resync, or signals this task fell behind
/// on and so never saw, wake every watcher. One such task runs per process.
pub async fn forward(
    mut signals: broadcast::Receiver<Signal>,
    feed: Feed<String>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let signal = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            signal = signals.recv() => signal,
        };
        match signal {
            Ok(Signal::Changed {
                subscriber,
                position,
            }) => feed.wake(subscriber.as_str(), position),
            Ok(Signal::Resync) => feed.wake_all(),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "live streams missed change signals; every watcher reads again"
                );
                feed.wake_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Takes a watcher out of the feed when its stream is dropped.
struct Leave<K: Eq + Hash> {
    state: Arc<Mutex<State<K>>>,
    subscriber: K,
    id: u64,
}

impl<K: Eq + Hash> Drop for Leave<K> {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(watchers) = state.watchers.get_mut(&self.subscriber) else {
            return;
        };
        let before = watchers.len();
        watchers.retain(|watcher| watcher.id != self.id);
        let removed = before - watchers.len();
        if watchers.is_empty() {
            state.watchers.remove(&self.subscriber);
        }
        state.open -= removed;
    }
}

/// One stream of a subscriber's wake-ups; it ends with [`Lagged`] if cut off.
pub struct Subscription<K: Eq + Hash> {
    rx: mpsc::Receiver<Wake>,
    lagged: Arc<AtomicBool>,
    ended: bool,
    leave: Option<Leave<K>>,
}

// Nothing in a subscription is pinned in place.
impl<K: Eq + Hash> Unpin for Subscription<K> {}

impl<K: Eq + Hash> tokio_stream::Stream for Subscription<K> {
    type Item = Result<Wake, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(wake)) => Poll::Ready(Some(Ok(wake))),
            Poll::Ready(None) => {
                self.ended = true;
                self.leave = None;
                if self.lagged.load(Ordering::SeqCst) {
                    Poll::Ready(Some(Err(Lagged)))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::watch::origin;

    fn limits(max: usize, per: usize, buffer: usize) -> StreamLimits {
        StreamLimits {
            max_streams: max,
            max_streams_per_subscriber: per,
            buffer,
            retry_after_ms: 1_000,
        }
    }

    fn at(micros: i64) -> Position {
        origin() + TimeDelta::microseconds(micros)
    }

    async fn nothing_more<K: Eq + Hash>(stream: &mut Subscription<K>) {
        let more = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(more.is_err(), "unexpected {more:?}");
    }

    #[tokio::test]
    async fn a_change_wakes_only_its_subscribers_streams() {
        let feed: Feed<String> = Feed::new(StreamLimits::default());
        let mut alice = feed.subscribe("alice".into()).expect("open");
        let mut bob = feed.subscribe("bob".into()).expect("open");
        feed.wake("alice", at(1));
        feed.wake("bob", at(2));
        feed.wake("carol", at(3));
        assert_eq!(alice.next().await, Some(Ok(Wake::Changed(at(1)))));
        assert_eq!(bob.next().await, Some(Ok(Wake::Changed(at(2)))));
        nothing_more(&mut alice).await;
        feed.wake_all();
        assert_eq!(alice.next().await, Some(Ok(Wake::Resync)));
        assert_eq!(bob.next().await, Some(Ok(Wake::Resync)));
    }

    #[tokio::test]
    async fn streams_are_bounded_in_all_and_per_subscriber_and_closing_frees_a_place() {
        let feed: Feed<&str> = Feed::new(limits(3, 2, 8));
        let first = feed.subscribe("alice").expect("open");
        let _second = feed.subscribe("alice").expect("open");
        assert!(matches!(
            feed.subscribe("alice"),
            Err(Refused::Subscriber { .. })
        ));
        let _bob = feed.subscribe("bob").expect("open");
        assert!(matches!(
            feed.subscribe("carol"),
            Err(Refused::Process { .. })
        ));
        drop(first);
        assert_eq!(feed.open(), 2);
        assert!(feed.subscribe("alice").is_ok());
        let refused: crate::ApiError = Refused::Process {
            retry_after: Duration::from_secs(1),
        }
        .into();
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt as _;
        assert!(status.get_details_retry_info().is_some());
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_cut_off_and_told() {
        let feed: Feed<&str> = Feed::new(limits(10, 10, 2));
        let slow = feed.subscribe("alice").expect("open");
        for n in 0..5 {
            feed.wake(&"alice", at(n));
        }
        assert_eq!(feed.open(), 0, "the slow stream still counts");
        let received: Vec<_> = slow.collect().await;
        assert_eq!(
            received,
            [
                Ok(Wake::Changed(at(0))),
                Ok(Wake::Changed(at(1))),
                Err(Lagged)
            ]
        );

        let slow = feed.subscribe("bob").expect("open");
        let _idle = feed.subscribe("carol").expect("open");
        for _ in 0..3 {
            feed.wake_all();
        }
        assert_eq!(feed.open(), 0, "a resync cuts off the slow, too");
        let received: Vec<_> = slow.collect().await;
        assert_eq!(received, [Ok(Wake::Resync), Ok(Wake::Resync), Err(Lagged)]);
    }

    fn changed(subscriber: &str, position: Position) -> Signal {
        Signal::Changed {
            subscriber: subscriber.into(),
            position,
        }
    }

    #[tokio::test]
    async fn forwarding_wakes_the_subscriber_on_a_change_and_everyone_on_a_resync() {
        let (signals, _) = broadcast::channel(16);
        let feed: Feed<String> = Feed::new(StreamLimits::default());
        let mut alice = feed.subscribe("customer:alice".into()).expect("open");
        let mut bob = feed.subscribe("customer:bob".into()).expect("open");
        let (stop, stopped) = watch::channel(false);
        let forwarding = tokio::spawn(forward(signals.subscribe(), feed.clone(), stopped));
        signals
            .send(changed("customer:alice", at(1)))
            .expect("a receiver");
        assert_eq!(alice.next().await, Some(Ok(Wake::Changed(at(1)))));
        nothing_more(&mut bob).await;
        signals.send(Signal::Resync).expect("a receiver");
        assert_eq!(alice.next().await, Some(Ok(Wake::Resync)));
        assert_eq!(bob.next().await, Some(Ok(Wake::Resync)));
        stop.send(true).expect("the forwarder listens");
        tokio::time::timeout(Duration::from_secs(5), forwarding)
            .await
            .expect("the forwarder stops")
            .expect("it did not panic");
    }

    #[tokio::test]
    async fn signals_the_forwarder_missed_wake_everyone() {
        let (signals, _) = broadcast::channel(2);
        let feed: Feed<String> = Feed::new(StreamLimits::default());
        let mut alice = feed.subscribe("customer:alice".into()).expect("open");
        let mut bob = feed.subscribe("customer:bob".into()).expect("open");
        let receiver = signals.subscribe();
        // More than the channel holds arrive before the forwarder reads any.
        for n in 0..4 {
            signals
                .send(changed("customer:carol", at(n)))
                .expect("a receiver");
        }
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(forward(receiver, feed.clone(), stopped));
        assert_eq!(alice.next().await, Some(Ok(Wake::Resync)));
        assert_eq!(bob.next().await, Some(Ok(Wake::Resync)));
        nothing_more(&mut alice).await;
    }
}
