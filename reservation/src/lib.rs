//! The reservation service: books a cleaning and pays for it in one call
//! (through the resilient payment client), and settles bookings whose
//! payment outcome was left unknown.

pub mod app;
pub mod bookings;
pub mod companies;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod payment_client;
pub mod reconciler;
pub mod storage;

pub use app::App;
pub use config::Settings;
