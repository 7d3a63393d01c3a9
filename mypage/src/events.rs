//! My page's reaction to events: record, recompute the view, tell the
//! watchers of its owners (on every replica, once it commits).

use ssak3_common::{
    changes::Changes,
    db::Database,
    events::{EventType, Handler, HandlerError, Subscription, consumer::HandlerFuture, inbox},
    ids::ReservationId,
};
use ssak3_proto::events::v1::Event;

use crate::storage;

/// What my page consumes: every event of a reservation's life.
pub const SUBSCRIPTION: Subscription = Subscription {
    queue: "mypage",
    events: &EventType::ALL,
};

/// Feeds the read model.
#[derive(Clone, Debug)]
pub struct Projector {
    db: Database,
    changes: Changes,
}

impl Projector {
    pub fn new(db: Database, changes: Changes) -> Self {
        Self { db, changes }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        ReservationId::parse(&event.reservation_id)?;
        let changes = self.changes.clone();
        let stored = self
            .db
            .grouped(move |c| {
                if !inbox::record(c, &event)? {
                    return Ok(None);
                }
                storage::apply(c, &changes, &event)
            })
            .await?;
        if let Some(stored) = stored {
            stored.committed(&self.changes);
        }
        Ok(())
    }
}

impl Handler for Projector {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}
