//! Layered configuration: built-in defaults < a TOML file < `SSAK3_*`
//! environment variables. Nested keys use a double underscore in the
//! environment: `SSAK3_PRICES__DEEP=90000`.
//!
//! [`Config`] holds what every service reads (addresses, database, broker,
//! shutdown, logs). Each service owns a section of its own (its `Settings`,
//! under top-level keys of its own) read from the same sources; the process
//! that knows all services refuses keys that no section knows
//! ([`refuse_unknown_keys`]), so a typo is an error, not a silent default.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
};
use serde::{Deserialize, Serialize};

/// The environment variable naming an optional TOML config file.
pub const CONFIG_FILE_ENV: &str = "SSAK3_CONFIG";

/// What every service is configured with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
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
    /// How bearer tokens are verified, and this service's own key.
    pub auth: crate::auth::AuthConfig,
    /// How long in-flight calls may run after a shutdown signal.
    pub shutdown_grace_ms: u64,
    /// After a shutdown signal, how long a service keeps accepting calls while
    /// its health already says NOT_SERVING, so that load balancers move away first.
    pub drain_delay_ms: u64,
    /// `text` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Where spans are exported over OTLP/gRPC (none: not exported).
    pub otlp_endpoint: Option<String>,
    /// The deployment environment (`production`, `staging`, …) spans report
    /// as `deployment.environment.name` (none: not reported).
    pub deployment_environment: Option<String>,
    /// The RabbitMQ broker that carries events between services.
    pub amqp_url: String,
    /// Event names, delivery and retry settings.
    pub events: EventsConfig,
    /// How many connections a listener takes, and how long they may be silent.
    pub connections: crate::connections::ConnectionLimits,
    /// How many live streams (Watch calls) a service holds.
    pub streams: crate::live::StreamLimits,
    /// How often one caller may make calls that write.
    pub rate_limit: crate::ratelimit::RateLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: None,
            admin_listen: None,
            database_url: None,
            database_pool_size: 8,
            data_dir: PathBuf::from("data"),
            auth: crate::auth::AuthConfig::default(),
            shutdown_grace_ms: 10_000,
            drain_delay_ms: 0,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            deployment_environment: None,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            events: EventsConfig::default(),
            connections: crate::connections::ConnectionLimits::default(),
            streams: crate::live::StreamLimits::default(),
            rate_limit: crate::ratelimit::RateLimits::default(),
        }
    }
}

/// A configuration that cannot be used: the sources cannot be read, a value
/// has the wrong type, or a key is unknown.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Invalid(#[from] Box<figment::Error>),
    #[error("unknown configuration key{} {}", if .0.len() == 1 { "" } else { "s" }, .0.join(", "))]
    UnknownKeys(Vec<String>),
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Invalid(Box::new(error))
    }
}

/// The provider stack: defaults, then the file named by `SSAK3_CONFIG` (if
/// any), then `SSAK3_*` variables. Each section is extracted from it.
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

/// One section (or the shared settings) from `figment`.
pub fn extract<T: serde::de::DeserializeOwned>(figment: &Figment) -> Result<T, ConfigError> {
    Ok(figment.extract()?)
}

/// The top-level keys of a section (from its defaults).
pub fn keys_of<T: Serialize + Default>() -> Result<BTreeSet<String>, ConfigError> {
    match Value::serialize(T::default())? {
        Value::Dict(_, dict) => Ok(dict.into_keys().collect()),
        _ => Ok(BTreeSet::new()),
    }
}

/// Fails naming every top-level key of `figment` that none of `known` has.
pub fn refuse_unknown_keys(
    figment: &Figment,
    known: &[BTreeSet<String>],
) -> Result<(), ConfigError> {
    let present: Dict = figment.extract()?;
    let unknown: Vec<String> = present
        .into_keys()
        .filter(|key| !known.iter().any(|keys| keys.contains(key)))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::UnknownKeys(unknown))
    }
}

impl Config {
    /// The shared settings from the usual sources (unknown keys are not checked here).
    pub fn load() -> Result<Self, ConfigError> {
        Ok(figment().extract()?)
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

/// Circuit breaker: opens when the failure rate over the calls of the last
/// `window_ms` (at least `minimum_calls` of them) reaches `failure_rate`;
/// after `open_ms` it lets `half_open_calls` probes through and closes if
/// they succeed. (A window of the last N calls would wait for N calls before
/// judging at all, whatever `minimum_calls` says.) The window is as long as
/// the default deadline: a hung peer's calls fail together one deadline after
/// the hang began, when the successes from before it have left the window, so
/// under load the breaker opens about one deadline into a hang; a longer
/// window lets those successes outvote the failures.
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
            window_ms: 2_000,
            minimum_calls: 5,
            open_ms: 5_000,
            half_open_calls: 1,
        }
    }
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
    /// Each waits for its write, so the more there are, the more of them one
    /// batch on PostgreSQL writes (see docs/group-commit.md, "Batches").
    pub lanes: usize,
    /// Outbox rows the relay publishes per batch.
    pub relay_batch: i64,
    /// How long a replica's claim on outbox rows lasts: rows a replica
    /// claimed and did not mark sent (it died) go to another after this.
    pub claim_ms: u64,
    /// First retry delay; it doubles up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            namespace: "ssak3".into(),
            prefetch: 128,
            max_deliveries: 5,
            lanes: 64,
            relay_batch: 128,
            claim_ms: 10_000,
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

#[cfg(test)]
// `figment::Jail` fixes the closure's error type; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    /// A section as a service would declare it.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Section {
        endpoint: String,
        prices: Prices,
    }

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Prices {
        standard: i64,
        deep: i64,
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "ssak3.toml",
                "endpoint = \"http://file:1\"\ndrain_delay_ms = 7\n[prices]\nstandard = 1\ndeep = 2\n",
            )?;
            jail.set_env("SSAK3_CONFIG", "ssak3.toml");
            jail.set_env("SSAK3_PRICES__DEEP", "20");
            jail.set_env("SSAK3_AUTH__JWKS_URL", "https://idp.example/jwks");
            let figment = figment();
            let config: Config = figment.extract()?;
            let section: Section = figment.extract()?;
            assert_eq!(section.endpoint, "http://file:1");
            assert_eq!(section.prices.standard, 1);
            assert_eq!(section.prices.deep, 20);
            assert_eq!(config.drain_delay_ms, 7);
            assert_eq!(
                config.auth.jwks_url.as_deref(),
                Some("https://idp.example/jwks")
            );
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
    fn keys_no_section_knows_are_refused_by_name() {
        Jail::expect_with(|jail| {
            let known = [
                keys_of::<Config>().map_err(|e| e.to_string())?,
                keys_of::<Section>().map_err(|e| e.to_string())?,
            ];
            jail.set_env("SSAK3_ENDPOINT", "ok");
            jail.set_env("SSAK3_OTLP_ENDPOINT", "http://127.0.0.1:4317");
            assert!(refuse_unknown_keys(&figment(), &known).is_ok());
            jail.set_env("SSAK3_ENDPIONT", "typo");
            let refused = refuse_unknown_keys(&figment(), &known).map_err(|e| e.to_string());
            assert_eq!(refused, Err("unknown configuration key endpiont".into()));
            Ok(())
        });
    }

    #[test]
    fn typos_inside_a_section_are_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("SSAK3_PRICES__DEEEP", "1");
            assert!(figment().extract::<Section>().is_err());
            Ok(())
        });
    }
}
