//! Integration tests of the payment service: spawned on port 0 with a fresh
//! database, the simulated gateway and the in-process bus, called through
//! the generated client as the reservation service and customers call it.

// Helpers fail the test on the spot; `expect` says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod charges;
mod reads;
mod schema;
mod support;
