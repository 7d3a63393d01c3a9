//! What the reservation service announces: the envelopes of the events its
//! aggregate emits. An event's `version` is the reservation's version after
//! the move (booked 1, confirmed 2, cancelled or cleaned 3), the step of the
//! reservation's life it records.

use ssak3_common::{events::new_event, time};
use ssak3_proto::events::v1::{self as ev, Event, event::Payload};

use crate::domain::{ReservationEvent, Transition};

/// The envelope of `transition`'s event, if it announces one.
pub fn envelope(transition: &Transition) -> Option<Event> {
    let r = &transition.next;
    let id = r.reservation_id.as_str();
    let payload = match transition.event.as_ref()? {
        ReservationEvent::Cancelled { reason } => {
            Payload::ReservationCancelled(ev::ReservationCancelled {
                reservation_id: id.to_owned(),
                customer_id: r.customer_id.as_str().to_owned(),
                cleaner_id: r.company_id.as_str().to_owned(),
                reason: reason.clone(),
            })
        }
        ReservationEvent::CleaningCompleted { at } => {
            Payload::CleaningCompleted(ev::CleaningCompleted {
                reservation_id: id.to_owned(),
                customer_id: r.customer_id.as_str().to_owned(),
                cleaner_id: r.company_id.as_str().to_owned(),
                completed_at: Some(time::to_timestamp(*at)),
            })
        }
    };
    Some(new_event(id, r.version, payload))
}
