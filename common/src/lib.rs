//! What every Ssak3 service needs, in one place: the shared vocabulary
//! (typed ids, money, text rules), layered configuration, tracing, database
//! access with embedded migrations, JWT authentication, the one mapping from
//! errors to `tonic::Status`, the event backbone, the resilient client
//! stack, live streams that resume without gaps (`watch`), and the server
//! bootstrap with health, reflection and graceful shutdown. It knows no
//! service: each owns its settings, metrics, subscriptions and schema, and
//! hands them in.

pub mod aggregate;
pub mod auth;
pub mod changes;
pub mod config;
pub mod connections;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod ids;
pub mod live;
pub mod metrics;
pub mod money;
pub mod paging;
pub mod ratelimit;
pub mod resilience;
pub mod server;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod watch;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use error::ApiError;
