//! The read model of reservations that customers and companies view.
//!
//! Its gRPC API and event consumers arrive with the event backbone; until
//! then the process serves health and reflection so that deployments and
//! probes can be wired up.

pub mod app;

pub use app::App;
