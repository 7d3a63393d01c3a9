//! Integration tests of the booking core: the reservation and payment services
//! spawned on port 0 with fresh databases, called through the generated clients.

mod auth;
mod booking;
mod resilience;
mod service;
mod support;
mod validation;
