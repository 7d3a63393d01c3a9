//! Integration tests of the notify service: spawned on port 0 with a fresh
//! database and the in-process bus; events are published as producers
//! publish them, notifications read through the generated client and
//! received by a webhook.

// Helpers fail the test on the spot; `expect` says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod delivery;
mod notifications;
mod replicas;
mod support;
