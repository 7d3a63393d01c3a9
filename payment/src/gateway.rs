//! The payment gateway behind the service, and a simulated one whose latency,
//! failures and declines are configurable (and changeable at run time), so
//! that tests and demos can make payment slow, failing or declining.

use std::{
    collections::HashMap,
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

#[derive(Clone, Debug)]
struct Recorded {
    outcome: ChargeOutcome,
    units: i64,
    refunded: bool,
}

/// An in-memory gateway for development, demos and tests.
#[derive(Debug, Default)]
pub struct SimulatedGateway {
    behaviour: RwLock<GatewayConfig>,
    charges: Mutex<HashMap<String, Recorded>>,
    /// Charges asked for, answered or not.
    attempts: AtomicUsize,
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
                .values()
                .filter(|c| c.outcome == ChargeOutcome::Approved)
                .count()
        })
    }

    /// Units charged and not refunded, over all charges.
    pub fn net_charged_units(&self) -> i64 {
        self.with_charges(|charges| {
            charges
                .values()
                .filter(|c| c.outcome == ChargeOutcome::Approved && !c.refunded)
                .map(|c| c.units)
                .sum()
        })
    }

    fn with_charges<T>(&self, f: impl FnOnce(&mut HashMap<String, Recorded>) -> T) -> T {
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
            tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
            if fastrand::f64() < behaviour.failure_rate {
                return Err(GatewayError::Outage);
            }
            let decided = Self::decide(&behaviour, charge);
            Ok(self.with_charges(|charges| {
                charges
                    .entry(charge.key.clone())
                    .or_insert(Recorded {
                        outcome: decided,
                        units: charge.amount.units(),
                        refunded: false,
                    })
                    .outcome
                    .clone()
            }))
        })
    }

    fn refund<'a>(&'a self, key: &'a str) -> GatewayFuture<'a, ()> {
        Box::pin(async move {
            let behaviour = self.behaviour();
            tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
            self.with_charges(|charges| {
                if let Some(recorded) = charges.get_mut(key) {
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
