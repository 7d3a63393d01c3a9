//! The resilient unary call: one tower stack around an outgoing gRPC call.
//!
//! Outermost first:
//! 1. load shedding: when the concurrency limit is reached, fail at once
//!    instead of queueing (a queue only adds latency to an overloaded peer);
//! 2. concurrency limit: bounds the calls in flight to the peer;
//! 3. circuit breaker: opens on a high failure rate and then fails fast
//!    without touching the peer; half-open probes close it again;
//! 4. deadline: a hung peer costs at most this long, and counts as a failure.
//!
//! Only transport-level failures (UNAVAILABLE, DEADLINE_EXCEEDED,
//! RESOURCE_EXHAUSTED, connect errors, which tonic reports as UNAVAILABLE,
//! CANCELLED, which a tonic server answers when the propagated
//! `grpc-timeout` runs out, and connections broken mid-call, see
//! [`is_transport_failure`]) count towards opening the breaker: an
//! INVALID_ARGUMENT is the caller's fault, not the peer's. The breaker sits above the generated client's call
//! (not the HTTP channel) because gRPC status codes arrive in trailers.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Code, Status};
use tower::{
    BoxError, Service, ServiceBuilder, ServiceExt as _, load_shed::error::Overloaded,
    util::BoxCloneSyncService,
};
use tower_resilience_circuitbreaker::{
    CircuitBreakerError, CircuitBreakerHandle, CircuitBreakerLayer, CircuitState, FnClassifier,
    SlidingWindowType,
};

use crate::config::BreakerConfig;

/// Why a resilient call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer answered with an application error (INVALID_ARGUMENT, NOT_FOUND, …).
    #[error("{}", .0.message())]
    Rejected(Status),
    /// The peer could not be used: down, slow, overloaded, or the breaker is open.
    /// The call may or may not have taken effect at the peer.
    #[error("{0}")]
    Unavailable(String),
}

/// Settings of one resilient call stack.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    pub name: &'static str,
    pub timeout: Duration,
    pub concurrency_limit: usize,
    pub breaker: BreakerConfig,
}

/// True when the peer, not the request, is at fault: the status codes that
/// say so, and any status this side made from an error of its own (a broken
/// pipe, a connection reset or closed mid-call, an HTTP/2 GOAWAY or
/// RST_STREAM), which tonic reports as UNKNOWN or INTERNAL with the error as
/// its source. A status the peer sent has no source.
pub fn is_transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled
    ) || std::error::Error::source(status).is_some()
}

type Classifier<Res> = fn(&Result<Res, Status>) -> bool;

fn classify<Res>(result: &Result<Res, Status>) -> bool {
    result.as_ref().is_err_and(is_transport_failure)
}

/// Counts of breaker state changes, for metrics and tests.
#[derive(Debug, Default)]
pub struct BreakerTransitions {
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    /// When the breaker last opened.
    opened_at: Mutex<Option<Instant>>,
}

/// A unary call wrapped in the stack described in the module docs.
pub struct ResilientCall<Req, Res> {
    service: BoxCloneSyncService<Req, Res, BoxError>,
    breaker: CircuitBreakerHandle<FnClassifier<Classifier<Res>>>,
    transitions: Arc<BreakerTransitions>,
    open_for: Duration,
}

impl<Req, Res> Clone for ResilientCall<Req, Res> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            breaker: self.breaker.clone(),
            transitions: Arc::clone(&self.transitions),
            open_for: self.open_for,
        }
    }
}

impl<Req, Res> std::fmt::Debug for ResilientCall<Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientCall")
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl<Req, Res> ResilientCall<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    /// Wraps `call` (a clone-able service making one gRPC call) in the stack.
    pub fn new<S>(call: S, policy: &CallPolicy) -> Result<Self, BoxError>
    where
        S: Service<Req, Response = Res, Error = Status> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        let transitions = Arc::new(BreakerTransitions::default());
        let counts = Arc::clone(&transitions);
        let name = policy.name;
        let (breaker_layer, breaker) = CircuitBreakerLayer::builder()
            .name(name)
            .failure_rate_threshold(policy.breaker.failure_rate)
            .sliding_window_type(SlidingWindowType::TimeBased)
            .sliding_window_duration(Duration::from_millis(policy.breaker.window_ms))
            .minimum_number_of_calls(policy.breaker.minimum_calls)
            .wait_duration_in_open(Duration::from_millis(policy.breaker.open_ms))
            .permitted_calls_in_half_open(policy.breaker.half_open_calls)
            .failure_classifier(classify::<Res> as Classifier<Res>)
            .on_state_transition(move |from, to| {
                match to {
                    CircuitState::Open => {
                        counts.opened.fetch_add(1, Ordering::Relaxed);
                        *counts
                            .opened_at
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    }
                    CircuitState::Closed => {
                        counts.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    CircuitState::HalfOpen => {}
                }
                tracing::warn!(breaker = name, ?from, ?to, "circuit breaker changed state");
            })
            .build_with_handle()?;

        let service = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(policy.concurrency_limit)
            .layer(breaker_layer)
            .map_err(deadline_to_status)
            .timeout(policy.timeout)
            .service(call);
        Ok(Self {
            service: BoxCloneSyncService::new(service.map_err(BoxError::from)),
            breaker,
            transitions,
            open_for: Duration::from_millis(policy.breaker.open_ms),
        })
    }

    /// Makes the call.
    pub async fn call(&self, request: Req) -> Result<Res, CallError> {
        self.service
            .clone()
            .oneshot(request)
            .await
            .map_err(into_call_error)
    }

    /// True while the breaker rejects calls without trying the peer: open,
    /// and its open period not yet over. (The breaker itself moves to
    /// half-open only when a call consults it, so callers that skip the call
    /// while this is true still let the probe through once the period ends.)
    pub fn is_open(&self) -> bool {
        let opened_at = *self
            .transitions
            .opened_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.breaker.is_open() && opened_at.is_some_and(|at| at.elapsed() < self.open_for)
    }

    /// The breaker's current state.
    pub fn breaker_state(&self) -> CircuitState {
        self.breaker.state()
    }

    /// How often the breaker has opened and closed.
    pub fn transitions(&self) -> &BreakerTransitions {
        &self.transitions
    }
}

/// The timeout layer's error, as the status the breaker classifies.
fn deadline_to_status(error: BoxError) -> Status {
    match error.downcast::<Status>() {
        Ok(status) => *status,
        Err(error) if error.is::<tower::timeout::error::Elapsed>() => {
            Status::deadline_exceeded("deadline exceeded")
        }
        Err(error) => Status::unavailable(error.to_string()),
    }
}

fn into_call_error(error: BoxError) -> CallError {
    if error.is::<Overloaded>() {
        return CallError::Unavailable("too many calls in flight".into());
    }
    match error.downcast::<CircuitBreakerError<Status>>() {
        Ok(breaker) => match *breaker {
            CircuitBreakerError::OpenCircuit => CallError::Unavailable("circuit open".into()),
            CircuitBreakerError::Inner(status) if is_transport_failure(&status) => {
                CallError::Unavailable(status.message().to_owned())
            }
            CircuitBreakerError::Inner(status) => CallError::Rejected(status),
        },
        Err(other) => CallError::Unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A peer that answers with `code` (or hangs) and counts the calls it receives.
    fn peer(
        code: Option<Code>,
        received: Arc<AtomicUsize>,
    ) -> impl Service<u32, Response = u32, Error = Status, Future: Send> + Clone + Send + Sync {
        tower::service_fn(move |n: u32| {
            received.fetch_add(1, Ordering::SeqCst);
            async move {
                match code {
                    Some(Code::Ok) => Ok(n),
                    Some(code) => Err(Status::new(code, "peer says no")),
                    None => std::future::pending().await,
                }
            }
        })
    }

    fn policy() -> CallPolicy {
        CallPolicy {
            name: "test",
            timeout: Duration::from_millis(100),
            concurrency_limit: 8,
            breaker: BreakerConfig {
                failure_rate: 0.5,
                window_ms: 60_000,
                minimum_calls: 4,
                open_ms: 60_000,
                half_open_calls: 1,
            },
        }
    }

    #[test]
    fn a_connection_broken_mid_call_is_a_transport_failure() {
        let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let status = Status::from_error(Box::new(broken));
        assert_eq!(status.code(), Code::Unknown);
        assert!(is_transport_failure(&status));
        // The same code sent by the peer is the peer's answer.
        assert!(!is_transport_failure(&Status::unknown("broken pipe")));
        assert!(!is_transport_failure(&Status::internal("bug")));
    }

    #[tokio::test]
    async fn caller_errors_never_open_the_breaker() -> Result<(), BoxError> {
        let received = Arc::new(AtomicUsize::new(0));
        let call = ResilientCall::new(
            peer(Some(Code::InvalidArgument), received.clone()),
            &policy(),
        )?;
        for n in 0..10 {
            assert!(matches!(call.call(n).await, Err(CallError::Rejected(_))));
        }
        assert_eq!(call.breaker_state(), CircuitState::Closed);
        assert_eq!(received.load(Ordering::SeqCst), 10);
        Ok(())
    }

    #[tokio::test]
    async fn unavailable_peer_opens_the_breaker_and_is_left_alone() -> Result<(), BoxError> {
        let received = Arc::new(AtomicUsize::new(0));
        let call = ResilientCall::new(peer(Some(Code::Unavailable), received.clone()), &policy())?;
        for n in 0..4 {
            assert!(matches!(call.call(n).await, Err(CallError::Unavailable(_))));
        }
        assert!(call.is_open());
        for n in 0..10 {
            assert!(
                matches!(call.call(n).await, Err(CallError::Unavailable(m)) if m == "circuit open")
            );
        }
        assert_eq!(received.load(Ordering::SeqCst), 4);
        assert_eq!(call.transitions().opened.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn open_period_ends_so_that_a_probe_can_close_the_breaker() -> Result<(), BoxError> {
        let received = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&healthy);
        let peer = tower::service_fn(move |n: u32| {
            received.fetch_add(1, Ordering::SeqCst);
            let healthy = flag.load(Ordering::SeqCst);
            async move {
                if healthy {
                    Ok(n)
                } else {
                    Err(Status::unavailable("down"))
                }
            }
        });
        let mut policy = policy();
        policy.breaker.open_ms = 100;
        let call = ResilientCall::new(peer, &policy)?;
        for n in 0..4 {
            let _ = call.call(n).await;
        }
        assert!(call.is_open());
        healthy.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !call.is_open(),
            "open period is over: a probe must be allowed"
        );
        assert_eq!(call.call(7).await.ok(), Some(7));
        assert_eq!(call.breaker_state(), CircuitState::Closed);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn hung_peer_hits_the_deadline_and_counts_as_failure() -> Result<(), BoxError> {
        let received = Arc::new(AtomicUsize::new(0));
        let call = ResilientCall::new(peer(None, received.clone()), &policy())?;
        for n in 0..4 {
            let result = call.call(n).await;
            assert!(
                matches!(result, Err(CallError::Unavailable(ref m)) if m == "deadline exceeded")
            );
        }
        assert!(call.is_open());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_concurrency_limit_are_shed() -> Result<(), BoxError> {
        let received = Arc::new(AtomicUsize::new(0));
        let mut policy = policy();
        policy.concurrency_limit = 2;
        policy.timeout = Duration::from_secs(3600);
        let call = ResilientCall::new(peer(None, received.clone()), &policy)?;
        let hung: Vec<_> = (0..2)
            .map(|n| {
                let call = call.clone();
                tokio::spawn(async move { call.call(n).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(
            matches!(call.call(9).await, Err(CallError::Unavailable(m)) if m.contains("too many"))
        );
        assert_eq!(received.load(Ordering::SeqCst), 2);
        hung.iter().for_each(|task| task.abort());
        Ok(())
    }
}
