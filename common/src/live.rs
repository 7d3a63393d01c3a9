//! Live streams of what is stored, by subscriber: each item goes only to
//! the watchers of its subscriber (an index, not a scan of every watcher),
//! the number of watchers is bounded in all and per subscriber, and a
//! watcher that falls behind is cut off rather than buffered without end.

use std::{
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
use tokio::sync::mpsc;

/// How many live streams a service holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamLimits {
    /// Streams open at once in one process.
    pub max_streams: usize,
    /// Streams open at once for one subscriber (a customer's devices).
    pub max_streams_per_subscriber: usize,
    /// Items a stream may hold unread before it is cut off.
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

struct Watcher<T> {
    id: u64,
    tx: mpsc::Sender<T>,
    lagged: Arc<AtomicBool>,
}

struct State<K, T> {
    watchers: HashMap<K, Vec<Watcher<T>>>,
    open: usize,
    next_id: u64,
}

/// The live feed of one kind of item, by subscriber `K`.
pub struct Feed<K, T> {
    state: Arc<Mutex<State<K, T>>>,
    limits: StreamLimits,
}

impl<K, T> Clone for Feed<K, T> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            limits: self.limits.clone(),
        }
    }
}

impl<K, T> std::fmt::Debug for Feed<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("limits", &self.limits)
            .finish()
    }
}

impl<K, T> Feed<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Clone + Send + 'static,
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

    /// A new stream of `subscriber`'s items, unless a limit is reached.
    pub fn subscribe(&self, subscriber: K) -> Result<Subscription<K, T>, Refused> {
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

    /// Hands `item` to the streams of `subscriber`; one that cannot take it
    /// (its reader is too slow) is cut off.
    pub fn publish(&self, subscriber: &K, item: &T) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(watchers) = state.watchers.get_mut(subscriber) else {
            return;
        };
        let before = watchers.len();
        watchers.retain(|watcher| match watcher.tx.try_send(item.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                watcher.lagged.store(true, Ordering::SeqCst);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        let removed = before - watchers.len();
        if watchers.is_empty() {
            state.watchers.remove(subscriber);
        }
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

/// Takes a watcher out of the feed when its stream is dropped.
struct Leave<K: Eq + Hash, T> {
    state: Arc<Mutex<State<K, T>>>,
    subscriber: K,
    id: u64,
}

impl<K: Eq + Hash, T> Drop for Leave<K, T> {
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

/// One stream of a subscriber's items; it ends with [`Lagged`] if cut off.
pub struct Subscription<K: Eq + Hash, T> {
    rx: mpsc::Receiver<T>,
    lagged: Arc<AtomicBool>,
    ended: bool,
    leave: Option<Leave<K, T>>,
}

// Nothing in a subscription is pinned in place.
impl<K: Eq + Hash, T> Unpin for Subscription<K, T> {}

impl<K: Eq + Hash, T> tokio_stream::Stream for Subscription<K, T> {
    type Item = Result<T, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
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
    use tokio_stream::StreamExt as _;

    use super::*;

    fn limits(max: usize, per: usize, buffer: usize) -> StreamLimits {
        StreamLimits {
            max_streams: max,
            max_streams_per_subscriber: per,
            buffer,
            retry_after_ms: 1_000,
        }
    }

    #[tokio::test]
    async fn items_reach_only_their_subscribers_streams() {
        let feed: Feed<&str, u32> = Feed::new(StreamLimits::default());
        let mut alice = feed.subscribe("alice").expect("open");
        let mut bob = feed.subscribe("bob").expect("open");
        feed.publish(&"alice", &1);
        feed.publish(&"bob", &2);
        feed.publish(&"carol", &3);
        assert_eq!(alice.next().await, Some(Ok(1)));
        assert_eq!(bob.next().await, Some(Ok(2)));
        let nothing = tokio::time::timeout(Duration::from_millis(50), alice.next()).await;
        assert!(nothing.is_err(), "alice got {nothing:?}");
    }

    #[tokio::test]
    async fn streams_are_bounded_in_all_and_per_subscriber_and_closing_frees_a_place() {
        let feed: Feed<&str, u32> = Feed::new(limits(3, 2, 8));
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
        let feed: Feed<&str, u32> = Feed::new(limits(10, 10, 2));
        let slow = feed.subscribe("alice").expect("open");
        for n in 0..5 {
            feed.publish(&"alice", &n);
        }
        assert_eq!(feed.open(), 0, "the slow stream still counts");
        let received: Vec<_> = slow.collect().await;
        assert_eq!(received, [Ok(0), Ok(1), Err(Lagged)]);
    }
}
