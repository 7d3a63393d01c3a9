//! The reservation service's own settings, read from the same sources as
//! the shared ones (`SSAK3_PRICES__DEEP`, `SSAK3_PAYMENT_CLIENT__TIMEOUT_MS`, …).

use serde::{Deserialize, Serialize};
use ssak3_common::config::BreakerConfig;

/// What only the reservation service reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the reservation service reaches the payment service.
    pub payment_endpoint: String,
    /// KRW prices by service type.
    pub prices: PriceList,
    /// The reservation → payment call: deadline, concurrency, breaker.
    pub payment_client: PaymentClientConfig,
    /// How bookings whose payment outcome is unknown are settled.
    pub reconcile: ReconcileConfig,
    /// Companies registered at start-up (as RegisterCompany would), e.g.
    /// `[{company_id = "acme-cleaning", display_name = "Acme Cleaning"}]`.
    pub companies: Vec<CompanySeed>,
}

/// A company to register at start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompanySeed {
    pub company_id: String,
    pub display_name: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            payment_endpoint: "http://127.0.0.1:50052".into(),
            prices: PriceList::default(),
            payment_client: PaymentClientConfig::default(),
            reconcile: ReconcileConfig::default(),
            companies: Vec::new(),
        }
    }
}

/// Price per service type, in KRW (no minor unit).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceList {
    pub standard: i64,
    pub deep: i64,
    pub move_out: i64,
}

impl Default for PriceList {
    fn default() -> Self {
        Self {
            standard: 50_000,
            deep: 90_000,
            move_out: 150_000,
        }
    }
}

/// The resilience stack on the reservation → payment call.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentClientConfig {
    /// Deadline of one ApprovePayment call.
    pub timeout_ms: u64,
    /// Calls in flight at once; more are shed with UNAVAILABLE.
    pub concurrency_limit: usize,
    /// The retry delay suggested to callers when payment is unavailable.
    pub retry_after_ms: u64,
    pub breaker: BreakerConfig,
}

impl Default for PaymentClientConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 2_000,
            concurrency_limit: 256,
            retry_after_ms: 5_000,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Settling of reservations left in PENDING_PAYMENT (payment timed out or the
/// caller went away): after `pending_timeout_ms` they are rejected and their
/// payment, if any went through, is cancelled.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    pub pending_timeout_ms: u64,
    pub interval_ms: u64,
    /// How long a replica's claim on the reservations it settles lasts: those
    /// of a replica that died go to another after this.
    pub claim_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            pending_timeout_ms: 60_000,
            interval_ms: 5_000,
            claim_ms: 30_000,
        }
    }
}
