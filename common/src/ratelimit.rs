//! Per-caller rate limits on the calls that write: each (role, subject) may
//! make `per_second` such calls, in bursts of up to `burst`; beyond, the
//! call is refused with RESOURCE_EXHAUSTED and a RetryInfo saying when the
//! next one will be let through. Services calling services are not limited
//! here (their callers already were). The state per caller is a few bytes
//! and is pruned every minute, so made-up callers cannot grow it.

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota,
    clock::{Clock as _, DefaultClock},
};
use serde::{Deserialize, Serialize};

use crate::{
    ApiError,
    auth::{Caller, Role},
};

/// How often a caller may write.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub enabled: bool,
    /// Writes per second, sustained.
    pub per_second: u32,
    /// Writes allowed at once after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 20,
            burst: 40,
        }
    }
}

/// The limiter of one service's write calls.
#[derive(Clone, Debug)]
pub struct WriteLimiter {
    limiter: Option<Arc<DefaultKeyedRateLimiter<(Role, String)>>>,
}

impl WriteLimiter {
    /// A limiter per `limits`; it prunes its state until the process ends.
    pub fn new(limits: &RateLimits) -> Self {
        let quota = NonZeroU32::new(limits.per_second)
            .filter(|_| limits.enabled)
            .map(|rate| {
                Quota::per_second(rate).allow_burst(NonZeroU32::new(limits.burst).unwrap_or(rate))
            });
        let limiter = quota.map(|quota| Arc::new(DefaultKeyedRateLimiter::keyed(quota)));
        if let Some(limiter) = &limiter
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let pruned = Arc::downgrade(limiter);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    every.tick().await;
                    let Some(limiter) = pruned.upgrade() else {
                        return;
                    };
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            });
        }
        Self { limiter }
    }

    /// Lets `caller` make one more write, or says how long to wait.
    pub fn check(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if caller.role == Role::Service {
            return Ok(());
        }
        limiter
            .check_key(&(caller.role, caller.subject.as_str().to_owned()))
            .map_err(|not_until| ApiError::ResourceExhausted {
                message: "too many calls from this caller; slow down".into(),
                retry_after: Some(not_until.wait_time_from(DefaultClock::default().now())),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Subject;

    fn caller(subject: &str, role: Role) -> Caller {
        Caller {
            subject: Subject::parse(subject).expect("valid"),
            role,
        }
    }

    #[tokio::test]
    async fn a_caller_beyond_the_burst_waits_and_others_do_not() {
        let limiter = WriteLimiter::new(&RateLimits {
            enabled: true,
            per_second: 2,
            burst: 3,
        });
        let alice = caller("alice", Role::Customer);
        for _ in 0..3 {
            assert!(limiter.check(&alice).is_ok());
        }
        let refused = limiter.check(&alice).expect_err("over the burst");
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt as _;
        let delay = status.get_details_retry_info().and_then(|r| r.retry_delay);
        assert!(
            delay.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_millis(500)),
            "{delay:?}"
        );
        assert!(limiter.check(&caller("bob", Role::Customer)).is_ok());
        // The same subject in another role is another caller.
        assert!(limiter.check(&caller("alice", Role::Cleaner)).is_ok());
        for _ in 0..10 {
            assert!(limiter.check(&caller("reservation", Role::Service)).is_ok());
        }
    }

    #[test]
    fn disabled_limits_let_everything_through() {
        let limiter = WriteLimiter::new(&RateLimits {
            enabled: false,
            ..RateLimits::default()
        });
        let alice = caller("alice", Role::Customer);
        assert!((0..1_000).all(|_| limiter.check(&alice).is_ok()));
    }
}
