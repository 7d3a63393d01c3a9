//! Notifies cleaning companies of payments and cancellations and customers
//! of completed cleanings: each event becomes one stored notification,
//! delivered through the log and an optional webhook, listed and watched
//! over gRPC by its recipient.

pub mod app;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod storage;

pub use app::App;
pub use config::Settings;
pub use events::SUBSCRIPTION;
