//! My page's reaction to events: record, recompute the view, tell the
//! watchers of its owners (on every replica, once it commits).

use ssak3_common::{
    changes::Changes,
    db::{Batches, Database},
    events::{EventType, Handler, HandlerError, Subscription, consumer::HandlerFuture},
    ids::ReservationId,
};
use ssak3_proto::events::v1::Event;

use crate::storage::{self, ViewChange};

/// What my page consumes: every event of a reservation's life.
pub const SUBSCRIPTION: Subscription = Subscription {
    queue: "mypage",
    events: &EventType::ALL,
};

/// Feeds the read model: the events in flight are applied in batches
/// ([`Batches`]), a statement per table for all of them.
#[derive(Clone, Debug)]
pub struct Projector {
    batches: Batches<Event, Option<ViewChange>>,
    changes: Changes,
}

impl Projector {
    pub fn new(db: Database, changes: Changes) -> Self {
        let marks = changes.clone();
        Self {
            batches: Batches::new(db, move |c, events| storage::apply_all(c, &marks, events)),
            changes,
        }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        ReservationId::parse(&event.reservation_id)?;
        if let Some(stored) = self.batches.write(event).await? {
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
