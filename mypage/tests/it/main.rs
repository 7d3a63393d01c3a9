//! Integration tests of my page: spawned on port 0 with a fresh database
//! and the in-process bus; events published as producers publish them,
//! views read through the generated client.

// Helpers fail the test on the spot; `expect` says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod batches;
mod replicas;
mod support;
mod views;
