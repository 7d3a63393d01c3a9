//! The payment service's own settings (`SSAK3_GATEWAY__LATENCY_MS`, …).

use serde::{Deserialize, Serialize};

/// What only the payment service reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The payment gateway: its simulated behaviour, and what callers are
    /// told when it is unavailable.
    pub gateway: GatewayConfig,
}

/// The simulated payment gateway, so that demos and tests can make payment
/// slow, failing or declining.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Added to every charge and refund.
    pub latency_ms: u64,
    /// Share of charges that fail as if the gateway were down, 0.0–1.0.
    pub failure_rate: f64,
    /// Charges above this many units are declined.
    pub decline_over_units: Option<i64>,
    /// Customers whose charges are always declined.
    pub decline_customers: Vec<String>,
    /// The retry delay suggested to callers while the gateway is unavailable.
    pub retry_after_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            failure_rate: 0.0,
            decline_over_units: None,
            decline_customers: Vec::new(),
            retry_after_ms: 2_000,
        }
    }
}
