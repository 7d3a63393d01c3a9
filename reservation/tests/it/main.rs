//! Integration tests of the booking core: the reservation and payment services
//! spawned on port 0 with fresh databases, called through the generated clients.

// Helpers fail the test on the spot; `expect` says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod auth;
mod booking;
mod lifecycle;
mod resilience;
mod service;
mod support;
mod validation;
