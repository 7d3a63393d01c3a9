//! What every Ssak3 service needs, in one place: layered configuration,
//! tracing, database access with embedded migrations, JWT authentication,
//! the one mapping from errors to `tonic::Status`, the resilient client
//! stack, and the server bootstrap with health, reflection and graceful
//! shutdown.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod metrics;
pub mod paging;
pub mod resilience;
pub mod server;
pub mod telemetry;
pub mod time;

#[cfg(feature = "test-support")]
pub mod test_support;

pub use error::ApiError;
