//! My page (CQRS read side): every customer's reservations and every
//! company's jobs with their status history, built from events alone in its
//! own database, and served and streamed over gRPC.

pub mod app;
pub mod events;
pub mod grpc;
pub mod projection;
pub mod storage;

pub use app::App;
pub use events::SUBSCRIPTION;
