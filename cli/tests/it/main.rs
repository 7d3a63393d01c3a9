//! Tests of the whole system: the binary as operators run it, and the four
//! services together over real RabbitMQ and PostgreSQL, or in one process.

mod binary;
mod bus;
mod drain;
mod faults;
mod metrics;
mod story;
mod system;
mod traces;
mod up;
