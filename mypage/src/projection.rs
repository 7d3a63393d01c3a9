//! The read model as a pure function of the events seen: whatever order
//! and however often they arrive, the same set gives the same view.
//!
//! Events are ordered by their `version` (the step of the reservation's
//! life they record: paid 2, cancelled or cleaned 3, refunded 4), then by
//! type and id so that even a malformed pair sharing a step sorts the same.
//! The status is that of the last event in this order; the history lists
//! them all; the details come from the payment approval. The view's
//! update_time is not the events' but the time my page stores it (see
//! `storage`).

use ssak3_proto::{
    events::v1::{Event, event::Payload},
    mypage::v1::{ReservationStatus, ReservationView, StatusChange},
};

/// Where a reservation stands on my page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Paid,
    Cancelled,
    Refunded,
    Cleaned,
}

impl Status {
    /// The status on the wire.
    pub fn wire(self) -> ReservationStatus {
        match self {
            Self::Paid => ReservationStatus::Paid,
            Self::Cancelled => ReservationStatus::Cancelled,
            Self::Refunded => ReservationStatus::Refunded,
            Self::Cleaned => ReservationStatus::Cleaned,
        }
    }

    /// The status an event puts a reservation in.
    pub fn of(payload: &Payload) -> Self {
        match payload {
            Payload::PaymentApproved(_) => Self::Paid,
            Payload::ReservationCancelled(_) => Self::Cancelled,
            Payload::PaymentCancelled(_) => Self::Refunded,
            Payload::CleaningCompleted(_) => Self::Cleaned,
        }
    }
}

/// The view of one reservation from its events; `None` without any.
pub fn project(events: &[Event]) -> Option<ReservationView> {
    let mut events: Vec<&Event> = events.iter().filter(|e| e.payload.is_some()).collect();
    events.sort_by(|a, b| {
        (a.version, &a.event_type, &a.event_id).cmp(&(b.version, &b.event_type, &b.event_id))
    });
    events.dedup_by(|a, b| a.event_id == b.event_id);
    let first = events.first()?;
    let mut view = ReservationView {
        reservation_id: first.reservation_id.clone(),
        ..Default::default()
    };
    for event in &events {
        let Some(payload) = &event.payload else {
            continue;
        };
        let (customer, cleaner) = match payload {
            Payload::PaymentApproved(p) => {
                view.address = p.address.clone();
                view.scheduled_at = p.scheduled_at;
                view.price = p.amount.clone();
                (&p.customer_id, &p.cleaner_id)
            }
            Payload::ReservationCancelled(c) => (&c.customer_id, &c.cleaner_id),
            Payload::PaymentCancelled(p) => (&p.customer_id, &p.cleaner_id),
            Payload::CleaningCompleted(c) => (&c.customer_id, &c.cleaner_id),
        };
        if view.customer_id.is_empty() {
            view.customer_id = customer.clone();
        }
        if view.cleaner_id.is_empty() {
            view.cleaner_id = cleaner.clone();
        }
        let status = Status::of(payload).wire() as i32;
        view.status = status;
        view.history.push(StatusChange {
            status,
            time: event.occurred_at,
            event_id: event.event_id.clone(),
        });
    }
    // update_time is my page's own: the watch position taken when it is stored.
    Some(view)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ssak3_common::events::new_event;
    use ssak3_proto::events::v1 as ev;

    use super::*;

    fn story() -> Vec<Event> {
        let rid = "r-1";
        let approved = new_event(
            rid,
            2,
            Payload::PaymentApproved(ev::PaymentApproved {
                payment_id: "p-1".into(),
                reservation_id: rid.into(),
                customer_id: "alice".into(),
                cleaner_id: "acme".into(),
                address: "12 Gangnam-daero".into(),
                scheduled_at: None,
                amount: Some(ssak3_proto::r#type::v1::Money {
                    currency_code: "KRW".into(),
                    units: 50_000,
                }),
            }),
        );
        let cancelled = new_event(
            rid,
            3,
            Payload::ReservationCancelled(ev::ReservationCancelled {
                reservation_id: rid.into(),
                customer_id: "alice".into(),
                cleaner_id: "acme".into(),
                reason: "changed plans".into(),
            }),
        );
        let refunded = new_event(
            rid,
            4,
            Payload::PaymentCancelled(ev::PaymentCancelled {
                payment_id: "p-1".into(),
                reservation_id: rid.into(),
                customer_id: "alice".into(),
                cleaner_id: "acme".into(),
                amount: None,
            }),
        );
        vec![approved, cancelled, refunded]
    }

    #[test]
    fn the_whole_story_reads_refunded_with_its_history() {
        let view = project(&story()).expect("a view");
        assert_eq!(view.status(), ReservationStatus::Refunded);
        assert_eq!(view.customer_id, "alice");
        assert_eq!(view.price.map(|p| p.units), Some(50_000));
        let statuses: Vec<_> = view.history.iter().map(StatusChange::status).collect();
        assert_eq!(
            statuses,
            [
                ReservationStatus::Paid,
                ReservationStatus::Cancelled,
                ReservationStatus::Refunded
            ]
        );
    }

    proptest! {
        /// Any sequence of deliveries (any order, any repetition) gives the
        /// view of the distinct events delivered, taken in their own order.
        /// The pool holds a cleaning too, which no real reservation has beside
        /// a cancellation: convergence must not depend on the input making sense.
        #[test]
        fn any_order_and_repetition_gives_the_same_view(
            deliveries in proptest::collection::vec(0usize..4, 1..16),
        ) {
            let mut pool = story();
            pool.push(new_event(
                "r-1",
                3,
                Payload::CleaningCompleted(ev::CleaningCompleted {
                    reservation_id: "r-1".into(),
                    customer_id: "alice".into(),
                    cleaner_id: "acme".into(),
                    completed_at: None,
                }),
            ));
            let delivered: Vec<Event> = deliveries.iter().map(|&i| pool[i].clone()).collect();
            let distinct: Vec<Event> = pool
                .iter()
                .enumerate()
                .filter(|(i, _)| deliveries.contains(i))
                .map(|(_, e)| e.clone())
                .collect();
            let view = project(&delivered);
            prop_assert_eq!(view.as_ref().map(|v| v.history.len()), Some(distinct.len()));
            prop_assert_eq!(view, project(&distinct));
        }
    }
}
