//! Layered configuration: built-in defaults < a TOML file < `SSAK3_*`
//! environment variables. Nested keys use a double underscore in the
//! environment: `SSAK3_BREAKER__FAILURE_RATE=0.5`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// The environment variable naming an optional TOML config file.
pub const CONFIG_FILE_ENV: &str = "SSAK3_CONFIG";

/// Everything a service can be configured with. Each service reads the parts it needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on; each service has its own default port.
    pub listen: Option<SocketAddr>,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`); by default
    /// the gRPC address with the port + 1000 (51051 for 50051).
    pub admin_listen: Option<SocketAddr>,
    /// `postgres://…` or `sqlite://PATH`; without it a service uses `DATA_DIR/<service>.db`.
    pub database_url: Option<String>,
    /// Database connections a service keeps at most.
    pub database_pool_size: u32,
    /// Where services keep their SQLite files when no database URL is given.
    pub data_dir: PathBuf,
    /// HS256 key that signs and verifies bearer tokens. Required by `ssak3 serve`.
    pub jwt_secret: Option<String>,
    /// Where the reservation service reaches the payment service.
    pub payment_endpoint: String,
    /// How long in-flight calls may run after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// After a shutdown signal, how long a service keeps accepting calls while
    /// its health already says NOT_SERVING, so that load balancers move away first.
    pub drain_delay_ms: u64,
    /// `text` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// KRW prices by service type.
    pub prices: PriceList,
    /// The reservation → payment call: deadline, concurrency, breaker.
    pub payment_client: PaymentClientConfig,
    /// How the reservation service settles bookings whose payment outcome is unknown.
    pub reconcile: ReconcileConfig,
    /// Behaviour of the simulated payment gateway.
    pub gateway: GatewayConfig,
    /// The RabbitMQ broker that carries events between services.
    pub amqp_url: String,
    /// Event names, delivery and retry settings.
    pub events: EventsConfig,
    /// How notifications are delivered.
    pub notify: NotifyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: None,
            admin_listen: None,
            database_url: None,
            database_pool_size: 8,
            data_dir: PathBuf::from("data"),
            jwt_secret: None,
            payment_endpoint: "http://127.0.0.1:50052".into(),
            shutdown_grace_ms: 10_000,
            drain_delay_ms: 0,
            log_format: LogFormat::Text,
            prices: PriceList::default(),
            payment_client: PaymentClientConfig::default(),
            reconcile: ReconcileConfig::default(),
            gateway: GatewayConfig::default(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            events: EventsConfig::default(),
            notify: NotifyConfig::default(),
        }
    }
}

impl Config {
    /// Loads defaults, then the file named by `SSAK3_CONFIG` (if any), then `SSAK3_*` variables.
    pub fn load() -> Result<Self, Box<figment::Error>> {
        Self::figment().extract().map_err(Box::new)
    }

    /// The provider stack behind [`Config::load`], for callers that merge more on top.
    pub fn figment() -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(
            Env::prefixed("SSAK3_")
                .ignore(&[CONFIG_FILE_ENV.trim_start_matches("SSAK3_")])
                .split("__"),
        )
    }

    /// How a service stops on a signal.
    pub fn shutdown_timing(&self) -> ShutdownTiming {
        ShutdownTiming {
            drain_delay: Duration::from_millis(self.drain_delay_ms),
            grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}

/// The phases of a graceful stop: NOT_SERVING but still accepting for
/// `drain_delay`, then no new calls and up to `grace` for those in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownTiming {
    pub drain_delay: Duration,
    pub grace: Duration,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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

/// Circuit breaker: opens when the failure rate over the calls of the last
/// `window_ms` (at least `minimum_calls` of them) reaches `failure_rate`;
/// after `open_ms` it lets `half_open_calls` probes through and closes if
/// they succeed. (A window of the last N calls would wait for N calls before
/// judging at all, whatever `minimum_calls` says.)
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub failure_rate: f64,
    pub window_ms: u64,
    pub minimum_calls: usize,
    pub open_ms: u64,
    pub half_open_calls: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            window_ms: 10_000,
            minimum_calls: 5,
            open_ms: 5_000,
            half_open_calls: 1,
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
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            pending_timeout_ms: 60_000,
            interval_ms: 5_000,
        }
    }
}

/// The simulated payment gateway, so that demos and tests can make payment
/// slow, failing or declining.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
}

/// Events: names on the broker, consumer flow control, retries.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Prefix of the exchange and queue names, so several systems can share a broker.
    pub namespace: String,
    /// Unacknowledged deliveries a consumer holds at once.
    pub prefetch: u16,
    /// Deliveries of one event before it goes to the dead-letter queue.
    pub max_deliveries: u32,
    /// Events a consumer handles concurrently (never two of one reservation).
    pub lanes: usize,
    /// Outbox rows the relay publishes per batch.
    pub relay_batch: i64,
    /// First retry delay; it doubles up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            namespace: "ssak3".into(),
            prefetch: 64,
            max_deliveries: 5,
            lanes: 4,
            relay_batch: 128,
            retry_base_ms: 100,
            retry_max_ms: 5_000,
        }
    }
}

impl EventsConfig {
    /// The delay before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_base_ms, self.retry_max_ms, attempt)
    }
}

/// Exponential backoff: `base_ms` before the first retry, doubling up to `max_ms`.
pub fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let factor = 1u64 << attempt.saturating_sub(1).min(16);
    Duration::from_millis(base_ms.saturating_mul(factor).min(max_ms))
}

/// Notification delivery: always to the log, and to a webhook when one is set.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Each notification is POSTed here as JSON.
    pub webhook_url: Option<String>,
    pub webhook_timeout_ms: u64,
    /// Delivery attempts before a notification is marked FAILED.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_timeout_ms: 2_000,
            max_attempts: 8,
            retry_base_ms: 200,
            retry_max_ms: 30_000,
        }
    }
}

impl NotifyConfig {
    /// The delay before delivery attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        backoff(self.retry_base_ms, self.retry_max_ms, attempt)
    }
}

#[cfg(test)]
// `figment::Jail` fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "ssak3.toml",
                "payment_endpoint = \"http://file:1\"\n[prices]\nstandard = 1\ndeep = 2\n",
            )?;
            jail.set_env("SSAK3_CONFIG", "ssak3.toml");
            jail.set_env("SSAK3_PRICES__DEEP", "20");
            jail.set_env("SSAK3_JWT_SECRET", "s3cret");
            let config = Config::load().map_err(|e| e.to_string())?;
            assert_eq!(config.payment_endpoint, "http://file:1");
            assert_eq!(config.prices.standard, 1);
            assert_eq!(config.prices.deep, 20);
            assert_eq!(config.prices.move_out, 150_000);
            assert_eq!(config.jwt_secret.as_deref(), Some("s3cret"));
            Ok(())
        });
    }

    #[test]
    fn the_database_pool_size_is_configurable() {
        Jail::expect_with(|jail| {
            assert_eq!(
                Config::load()
                    .map_err(|e| e.to_string())?
                    .database_pool_size,
                8
            );
            jail.set_env("SSAK3_DATABASE_POOL_SIZE", "3");
            assert_eq!(
                Config::load()
                    .map_err(|e| e.to_string())?
                    .database_pool_size,
                3
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("SSAK3_PAYMENT_ENDPIONT", "typo");
            assert!(Config::load().is_err());
            Ok(())
        });
    }
}
