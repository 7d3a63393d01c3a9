//! My page's reaction to events: record, recompute the view, tell watchers.

use ssak3_common::live::Feed;
use ssak3_common::{
    db::Database,
    events::{EventType, Handler, HandlerError, Subscription, consumer::HandlerFuture, inbox},
    ids::ReservationId,
};
use ssak3_proto::{events::v1::Event, mypage::v1::ReservationView};

use crate::storage::{self, Owner};

/// What my page consumes: every event of a reservation's life.
pub const SUBSCRIPTION: Subscription = Subscription {
    queue: "mypage",
    events: &EventType::ALL,
};

/// Feeds the read model.
#[derive(Clone, Debug)]
pub struct Projector {
    db: Database,
    feed: Feed<Owner, ReservationView>,
}

impl Projector {
    pub fn new(db: Database, feed: Feed<Owner, ReservationView>) -> Self {
        Self { db, feed }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        ReservationId::parse(&event.reservation_id)?;
        let view = self
            .db
            .transaction(move |c| {
                if !inbox::record(c, &event)? {
                    return Ok(None);
                }
                storage::apply(c, &event)
            })
            .await?;
        if let Some(view) = view {
            for owner in Owner::of(&view) {
                self.feed.publish(&owner, &view);
            }
        }
        Ok(())
    }
}

impl Handler for Projector {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}
