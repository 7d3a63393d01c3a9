//! The payment service: charges for reservations through a [`gateway::PaymentGateway`],
//! once per reservation, and refunds them.

pub mod app;
pub mod config;
pub mod domain;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod payments;
pub mod storage;

pub use app::App;
pub use config::Settings;
pub use events::SUBSCRIPTION;
