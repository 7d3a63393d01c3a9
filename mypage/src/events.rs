//! My page's reaction to events: record, recompute the view, tell watchers.

use ssak3_common::{
    db::Database,
    events::{Handler, HandlerError, consumer::HandlerFuture, inbox},
};
use ssak3_proto::{events::v1::Event, mypage::v1::ReservationView};
use tokio::sync::broadcast;

use crate::storage;

/// Feeds the read model.
#[derive(Clone, Debug)]
pub struct Projector {
    db: Database,
    feed: broadcast::Sender<ReservationView>,
}

impl Projector {
    pub fn new(db: Database, feed: broadcast::Sender<ReservationView>) -> Self {
        Self { db, feed }
    }

    async fn apply(&self, event: Event) -> Result<(), HandlerError> {
        if event.reservation_id.is_empty() {
            return Err(HandlerError::Rejected(
                "event without a reservation id".into(),
            ));
        }
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
            let _ = self.feed.send(view);
        }
        Ok(())
    }
}

impl Handler for Projector {
    fn handle(&self, event: Event) -> HandlerFuture<'_> {
        Box::pin(self.apply(event))
    }
}
