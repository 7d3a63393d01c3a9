//! The payment gateway behind the service, and a simulated one whose latency,
//! failures and declines are configurable (and changeable at run time), so
//! that tests and demos can make payment slow, failing or declining.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Mutex, PoisonError, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use ssak3_common::money::Money;

use crate::config::GatewayConfig;
pub use crate::domain::ChargeOutcome;

/// A boxed future, so that the trait can be used as `dyn PaymentGateway`.
pub type GatewayFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, GatewayError>> + Send + 'a>>;

/// One charge. `key` makes charges and refunds idempotent at the gateway.
#[derive(Clone, Debug)]
pub struct Charge {
    pub key: String,
    pub customer_id: String,
    pub amount: Money,
}

/// The gateway could not be used; the charge may be retried with the same key.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The gateway reported an outage.
    #[error("the payment gateway reported an outage")]
    Outage,
}

/// A card processor. Both operations are idempotent per charge key.
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges once per key; repeating a key returns the first outcome.
    fn charge<'a>(&'a self, charge: &'a Charge) -> GatewayFuture<'a, ChargeOutcome>;
    /// Refunds the charge made under `key`, if any; repeating it changes nothing.
    fn refund<'a>(&'a self, key: &'a str) -> GatewayFuture<'a, ()>;
}

/// How many charges the simulated gateway remembers: a retry of a charge
/// comes within seconds or minutes, and payment's own database keeps one
/// payment per reservation whatever the gateway remembers.
pub const REMEMBERED_CHARGES: usize = 10_000;

#[derive(Clone, Debug)]
struct Recorded {
    outcome: ChargeOutcome,
    units: i64,
    refunded: bool,
}

/// The charges the simulated gateway remembers, and in which order they came.
#[derive(Debug, Default)]
struct Charges {
    by_key: HashMap<String, Recorded>,
    order: VecDeque<String>,
}

impl Charges {
    /// The outcome recorded under `key`, recording `recorded` if none is;
    /// the oldest charge is forgotten past [`REMEMBERED_CHARGES`].
    fn record(&mut self, key: &str, recorded: Recorded) -> ChargeOutcome {
        if let Some(known) = self.by_key.get(key) {
            return known.outcome.clone();
        }
        let outcome = recorded.outcome.clone();
        self.by_key.insert(key.to_owned(), recorded);
        self.order.push_back(key.to_owned());
        while self.order.len() > REMEMBERED_CHARGES {
            if let Some(oldest) = self.order.pop_front() {
                self.by_key.remove(&oldest);
            }
        }
        outcome
    }
}

/// An in-memory gateway for development, demos and tests; it remembers the
/// latest [`REMEMBERED_CHARGES`] charges.
#[derive(Debug, Default)]
pub struct SimulatedGateway {
    behaviour: RwLock<GatewayConfig>,
    charges: Mutex<Charges>,
    /// Charges asked for, answered or not.
    attempts: AtomicUsize,
}

impl GatewayConfig {
    /// The configured latency; none at all when it is zero (a zero sleep
    /// still waits for the timer's next millisecond tick).
    async fn wait(&self) {
        if self.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        }
    }
}

impl SimulatedGateway {
    pub fn new(behaviour: GatewayConfig) -> Self {
        Self {
            behaviour: RwLock::new(behaviour),
            charges: Mutex::default(),
            attempts: AtomicUsize::new(0),
        }
    }

    /// Changes latency, failure rate or decline rules from now on.
    pub fn set_behaviour(&self, behaviour: GatewayConfig) {
        *self
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    fn behaviour(&self) -> GatewayConfig {
        self.behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many charges were asked for (each call, also those still in progress).
    pub fn charges_attempted(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// How many distinct charges were approved.
    pub fn approved_charges(&self) -> usize {
        self.with_charges(|charges| {
            charges
                .by_key
                .values()
                .filter(|c| c.outcome == ChargeOutcome::Approved)
                .count()
        })
    }

    /// Units charged and not refunded, over the charges remembered.
    pub fn net_charged_units(&self) -> i64 {
        self.with_charges(|charges| {
            charges
                .by_key
                .values()
                .filter(|c| c.outcome == ChargeOutcome::Approved && !c.refunded)
                .map(|c| c.units)
                .sum()
        })
    }

    fn with_charges<T>(&self, f: impl FnOnce(&mut Charges) -> T) -> T {
        f(&mut self.charges.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn decide(behaviour: &GatewayConfig, charge: &Charge) -> ChargeOutcome {
        if behaviour.decline_customers.contains(&charge.customer_id) {
            return ChargeOutcome::Declined {
                reason: "card declined by issuer".into(),
            };
        }
        match behaviour.decline_over_units {
            Some(limit) if charge.amount.units() > limit => ChargeOutcome::Declined {
                reason: format!(
                    "amount over the limit of {limit} {}",
                    charge.amount.currency_code()
                ),
            },
            _ => ChargeOutcome::Approved,
        }
    }
}

impl PaymentGateway for SimulatedGateway {
    fn charge<'a>(&'a self, charge: &'a Charge) -> GatewayFuture<'a, ChargeOutcome> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let behaviour = self.behaviour();
            behaviour.wait().await;
            if fastrand::f64() < behaviour.failure_rate {
                return Err(GatewayError::Outage);
            }
            let decided = Self::decide(&behaviour, charge);
            Ok(self.with_charges(|charges| {
                charges.record(
                    &charge.key,
                    Recorded {
                        outcome: decided,
                        units: charge.amount.units(),
                        refunded: false,
                    },
                )
            }))
        })
    }

    fn refund<'a>(&'a self, key: &'a str) -> GatewayFuture<'a, ()> {
        Box::pin(async move {
            let behaviour = self.behaviour();
            behaviour.wait().await;
            self.with_charges(|charges| {
                if let Some(recorded) = charges.by_key.get_mut(key) {
                    recorded.refunded = true;
                }
            });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(customer: &str, units: i64) -> Charge {
        Charge {
            key: format!("{customer}-{units}"),
            customer_id: customer.into(),
            amount: Money::krw(units),
        }
    }

    #[tokio::test]
    async fn a_key_is_charged_once_and_refunds_are_idempotent() -> Result<(), GatewayError> {
        let gateway = SimulatedGateway::default();
        let c = charge("alice", 100);
        assert_eq!(gateway.charge(&c).await?, ChargeOutcome::Approved);
        assert_eq!(gateway.charge(&c).await?, ChargeOutcome::Approved);
        assert_eq!(gateway.approved_charges(), 1);
        assert_eq!(gateway.net_charged_units(), 100);
        gateway.refund(&c.key).await?;
        gateway.refund(&c.key).await?;
        assert_eq!(gateway.net_charged_units(), 0);
        Ok(())
    }

    /// Memory stays bounded however many charges pass: every charge ever
    /// made, kept, grew the payment service by some 150 bytes a booking.
    #[tokio::test]
    async fn only_the_latest_charges_are_remembered() -> Result<(), GatewayError> {
        let gateway = SimulatedGateway::new(GatewayConfig {
            latency_ms: 0,
            ..GatewayConfig::default()
        });
        for n in 0..REMEMBERED_CHARGES + 100 {
            gateway.charge(&charge("alice", n as i64)).await?;
        }
        assert_eq!(gateway.approved_charges(), REMEMBERED_CHARGES);
        // The latest charge is still known: a retry answers the same.
        let latest = charge("alice", (REMEMBERED_CHARGES + 99) as i64);
        assert_eq!(gateway.charge(&latest).await?, ChargeOutcome::Approved);
        assert_eq!(gateway.approved_charges(), REMEMBERED_CHARGES);
        Ok(())
    }

    #[tokio::test]
    async fn decline_rules_apply() -> Result<(), GatewayError> {
        let gateway = SimulatedGateway::new(GatewayConfig {
            decline_over_units: Some(1_000),
            decline_customers: vec!["mallory".into()],
            ..GatewayConfig::default()
        });
        assert!(matches!(
            gateway.charge(&charge("bob", 1_001)).await?,
            ChargeOutcome::Declined { .. }
        ));
        assert!(matches!(
            gateway.charge(&charge("mallory", 1)).await?,
            ChargeOutcome::Declined { .. }
        ));
        assert_eq!(
            gateway.charge(&charge("bob", 1_000)).await?,
            ChargeOutcome::Approved
        );
        Ok(())
    }

    #[tokio::test]
    async fn failure_rate_one_always_fails() {
        let gateway = SimulatedGateway::new(GatewayConfig {
            failure_rate: 1.0,
            ..GatewayConfig::default()
        });
        assert!(gateway.charge(&charge("bob", 1)).await.is_err());
        assert_eq!(gateway.approved_charges(), 0);
    }
}
