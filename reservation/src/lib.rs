//! The reservation service: books a cleaning and pays for it in one call
//! (through the resilient payment client), and settles bookings whose
//! payment outcome was left unknown.

pub mod app;
pub mod bookings;
pub mod domain;
pub mod grpc;
pub mod payment_client;
pub mod reconciler;
pub mod storage;

pub use app::App;
