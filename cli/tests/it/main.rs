//! Tests of the whole system: the binary as operators run it, and the four
//! services together over real RabbitMQ and PostgreSQL, or in one process.

// Helpers fail the test on the spot; `expect` says what was expected.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod binary;
mod bus;
mod check;
mod clients;
mod contract;
mod drain;
mod faults;
mod hostile;
mod identity;
mod metrics;
mod otlp;
mod prometheus;
mod replicas;
mod settings;
mod story;
mod system;
mod traces;
mod up;
