//! The audit: what the clients were told, checked against what the
//! databases and the broker hold once the system has settled.
//!
//! A pure function of the history and a snapshot, so that its rules can be
//! shown to catch what they are for (see the tests).

use std::collections::{BTreeMap, BTreeSet};

/// What one client was told about one booking.
#[derive(Clone, Debug, Default)]
pub struct Booking {
    pub customer: String,
    pub request_id: String,
    /// The reservation of a CONFIRMED answer: the booking was acknowledged.
    pub confirmed: Option<Confirmed>,
    /// The client asked to cancel it (whatever the answer).
    pub cancel_asked: bool,
    /// The cancellation was acknowledged (CANCELLED answer).
    pub cancelled: bool,
    /// The company asked to complete it (whatever the answer).
    pub complete_asked: bool,
    /// The completion was acknowledged (CLEANED answer).
    pub cleaned: bool,
}

/// An acknowledged booking: the reservation and its price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmed {
    pub reservation_id: String,
    pub units: i64,
    pub currency: String,
}

/// A row of reservation's `reservations`.
#[derive(Clone, Debug)]
pub struct Reservation {
    pub reservation_id: String,
    pub customer_id: String,
    pub state: String,
    pub units: i64,
    pub currency: String,
}

/// A row of payment's `payments`.
#[derive(Clone, Debug)]
pub struct Payment {
    pub payment_id: String,
    pub reservation_id: String,
    pub units: Option<i64>,
    pub currency: Option<String>,
    pub state: String,
}

/// A row of notify's `notifications`.
#[derive(Clone, Debug)]
pub struct Notification {
    pub reservation_id: String,
    pub kind: String,
    pub event_id: String,
}

/// An event in an outbox (reservation's or payment's).
#[derive(Clone, Debug)]
pub struct Published {
    pub event_id: String,
    pub routing_key: String,
    pub sent: bool,
}

/// Everything the audit reads once the system has settled.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub reservations: Vec<Reservation>,
    pub payments: Vec<Payment>,
    pub notifications: Vec<Notification>,
    pub published: Vec<Published>,
    /// My page as the customers see it: reservation id → status
    /// (`PAID`, `CANCELLED`, `REFUNDED`, `CLEANED`).
    pub views: BTreeMap<String, String>,
    /// Messages (ready or unacknowledged) in each queue of the namespace,
    /// dead-letter queues included.
    pub queues: BTreeMap<String, u64>,
}

/// The notification kind each event type makes.
fn kind_of(routing_key: &str) -> Option<&'static str> {
    match routing_key {
        "payment.approved" => Some("PAYMENT_APPROVED"),
        "payment.cancelled" => Some("PAYMENT_CANCELLED"),
        "cleaning.completed" => Some("CLEANING_COMPLETED"),
        _ => None,
    }
}

/// Every rule the history and the snapshot break; empty when they agree.
pub fn audit(history: &[Booking], snapshot: &Snapshot) -> Vec<String> {
    let mut violations = Vec::new();
    let reservations: BTreeMap<&str, &Reservation> = snapshot
        .reservations
        .iter()
        .map(|r| (r.reservation_id.as_str(), r))
        .collect();
    let mut payments: BTreeMap<&str, Vec<&Payment>> = BTreeMap::new();
    for p in &snapshot.payments {
        payments
            .entry(p.reservation_id.as_str())
            .or_default()
            .push(p);
    }
    let mut notified: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for n in &snapshot.notifications {
        *notified
            .entry((n.reservation_id.as_str(), n.kind.as_str()))
            .or_default() += 1;
    }
    let count = |id: &str, kind: &str| notified.get(&(id, kind)).copied().unwrap_or(0);

    // Every acknowledged answer holds.
    for b in history {
        let Some(confirmed) = &b.confirmed else {
            continue;
        };
        let id = confirmed.reservation_id.as_str();
        let Some(r) = reservations.get(id) else {
            violations.push(format!(
                "acknowledged booking {id} ({}/{}) is not in reservation",
                b.customer, b.request_id
            ));
            continue;
        };
        if r.customer_id != b.customer || r.units != confirmed.units {
            violations.push(format!(
                "acknowledged booking {id} is stored for {} at {} (answered {} at {})",
                r.customer_id, r.units, b.customer, confirmed.units
            ));
        }
        let allowed: &[&str] = match (b.cancelled, b.cleaned) {
            (true, _) => &["CANCELLED"],
            (false, true) => &["CLEANED"],
            (false, false) => match (b.cancel_asked, b.complete_asked) {
                (true, _) => &["CONFIRMED", "CANCELLED"],
                (false, true) => &["CONFIRMED", "CLEANED"],
                (false, false) => &["CONFIRMED"],
            },
        };
        if !allowed.contains(&r.state.as_str()) {
            violations.push(format!(
                "acknowledged booking {id} is {} (expected {})",
                r.state,
                allowed.join(" or ")
            ));
        }
        if b.cancelled && count(id, "PAYMENT_CANCELLED") != 1 {
            violations.push(format!(
                "acknowledged cancellation of {id}: {} refund notifications",
                count(id, "PAYMENT_CANCELLED")
            ));
        }
    }

    // Money and bookings agree, both ways.
    for r in &snapshot.reservations {
        let id = r.reservation_id.as_str();
        let paid = payments.get(id).map(Vec::as_slice).unwrap_or_default();
        let approved = paid.iter().filter(|p| p.state == "APPROVED").count();
        let refunded = paid.iter().filter(|p| p.state == "CANCELLED").count();
        if paid.len() > 1 {
            violations.push(format!("{id} has {} payments", paid.len()));
        }
        let amount_right = |p: &&&Payment| {
            p.units == Some(r.units) && p.currency.as_deref() == Some(r.currency.as_str())
        };
        match r.state.as_str() {
            "PENDING_PAYMENT" => violations.push(format!("{id} is still PENDING_PAYMENT")),
            "CONFIRMED" | "CLEANED" => {
                if approved != 1 || paid.len() != 1 {
                    violations.push(format!(
                        "{id} is {} with {approved} approved of {} payments",
                        r.state,
                        paid.len()
                    ));
                } else if !paid.iter().all(|p| amount_right(&p)) {
                    violations.push(format!("{id} was charged a wrong amount"));
                }
            }
            "CANCELLED" => {
                if refunded != 1 || paid.len() != 1 {
                    violations.push(format!(
                        "{id} is CANCELLED with {refunded} refunded of {} payments",
                        paid.len()
                    ));
                }
            }
            "REJECTED" => {
                if approved > 0 {
                    violations.push(format!("{id} is REJECTED but its payment is APPROVED"));
                }
            }
            other => violations.push(format!("{id} is in an unknown state {other}")),
        }
    }
    for p in &snapshot.payments {
        if !reservations.contains_key(p.reservation_id.as_str()) && p.state != "CANCELLED" {
            violations.push(format!(
                "payment {} ({}) for {} has no reservation",
                p.payment_id, p.state, p.reservation_id
            ));
        }
    }

    // Exactly one notification per event, for every event.
    let events: BTreeMap<&str, &Published> = snapshot
        .published
        .iter()
        .map(|e| (e.event_id.as_str(), e))
        .collect();
    let mut per_event: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &snapshot.notifications {
        *per_event.entry(n.event_id.as_str()).or_default() += 1;
        match events.get(n.event_id.as_str()) {
            None => violations.push(format!(
                "notification for {} names an event no outbox holds",
                n.reservation_id
            )),
            Some(e) if kind_of(&e.routing_key) != Some(n.kind.as_str()) => violations.push(
                format!("notification {} for event {}", n.kind, e.routing_key),
            ),
            Some(_) => {}
        }
    }
    for e in &snapshot.published {
        if kind_of(&e.routing_key).is_some() {
            let n = per_event.get(e.event_id.as_str()).copied().unwrap_or(0);
            if n != 1 {
                violations.push(format!(
                    "event {} ({}): {n} notifications",
                    e.event_id, e.routing_key
                ));
            }
        }
        if !e.sent {
            violations.push(format!("event {} still unsent in its outbox", e.event_id));
        }
    }
    let mut seen = BTreeSet::new();
    for ((id, kind), n) in &notified {
        seen.insert(*id);
        if *n > 1 {
            violations.push(format!("{id}: {n} notifications {kind}"));
        }
    }
    for r in &snapshot.reservations {
        let id = r.reservation_id.as_str();
        let expected: &[&str] = match r.state.as_str() {
            "CONFIRMED" => &["PAYMENT_APPROVED"],
            "CLEANED" => &["PAYMENT_APPROVED", "CLEANING_COMPLETED"],
            "CANCELLED" => &["PAYMENT_APPROVED", "PAYMENT_CANCELLED"],
            _ => &[],
        };
        for kind in expected {
            if count(id, kind) != 1 {
                violations.push(format!(
                    "{id} ({}): {} notifications {kind}",
                    r.state,
                    count(id, kind)
                ));
            }
        }
    }

    // My page matches reservation.
    for r in &snapshot.reservations {
        let id = r.reservation_id.as_str();
        let view = snapshot.views.get(id).map(String::as_str);
        let fits = match r.state.as_str() {
            "CONFIRMED" => view == Some("PAID"),
            "CLEANED" => view == Some("CLEANED"),
            "CANCELLED" => view == Some("REFUNDED"),
            // Rejected: never shown, or shown refunded when a charge was voided.
            "REJECTED" => matches!(view, None | Some("REFUNDED")),
            _ => true,
        };
        if !fits {
            violations.push(format!(
                "my page shows {id} as {} while reservation has it {}",
                view.unwrap_or("nothing"),
                r.state
            ));
        }
    }
    for id in snapshot.views.keys() {
        if !reservations.contains_key(id.as_str()) {
            violations.push(format!(
                "my page shows {id}, which reservation does not hold"
            ));
        }
    }

    // Queues and dead-letter queues drained.
    for (queue, messages) in &snapshot.queues {
        if *messages > 0 {
            violations.push(format!("{messages} messages left in {queue}"));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two customers' bookings, the second cancelled and refunded: all in order.
    fn settled() -> (Vec<Booking>, Snapshot) {
        let booking = |n: u32, cancelled: bool| Booking {
            customer: format!("c{n}"),
            request_id: format!("q{n}"),
            confirmed: Some(Confirmed {
                reservation_id: format!("r{n}"),
                units: 50_000,
                currency: "KRW".into(),
            }),
            cancel_asked: cancelled,
            cancelled,
            ..Booking::default()
        };
        let reservation = |n: u32, state: &str| Reservation {
            reservation_id: format!("r{n}"),
            customer_id: format!("c{n}"),
            state: state.into(),
            units: 50_000,
            currency: "KRW".into(),
        };
        let payment = |n: u32, state: &str| Payment {
            payment_id: format!("p{n}"),
            reservation_id: format!("r{n}"),
            units: Some(50_000),
            currency: Some("KRW".into()),
            state: state.into(),
        };
        let event = |id: &str, key: &str| Published {
            event_id: id.into(),
            routing_key: key.into(),
            sent: true,
        };
        let notification = |n: u32, kind: &str, event: &str| Notification {
            reservation_id: format!("r{n}"),
            kind: kind.into(),
            event_id: event.into(),
        };
        let snapshot = Snapshot {
            reservations: vec![reservation(1, "CONFIRMED"), reservation(2, "CANCELLED")],
            payments: vec![payment(1, "APPROVED"), payment(2, "CANCELLED")],
            notifications: vec![
                notification(1, "PAYMENT_APPROVED", "e1"),
                notification(2, "PAYMENT_APPROVED", "e2"),
                notification(2, "PAYMENT_CANCELLED", "e3"),
            ],
            published: vec![
                event("e1", "payment.approved"),
                event("e2", "payment.approved"),
                event("e4", "reservation.cancelled"),
                event("e3", "payment.cancelled"),
            ],
            views: [("r1", "PAID"), ("r2", "REFUNDED")]
                .into_iter()
                .map(|(id, s)| (id.to_owned(), s.to_owned()))
                .collect(),
            queues: [
                ("faults.payment".to_owned(), 0),
                ("faults.payment.dead".to_owned(), 0),
            ]
            .into_iter()
            .collect(),
        };
        (vec![booking(1, false), booking(2, true)], snapshot)
    }

    #[test]
    fn a_settled_history_passes() {
        let (history, snapshot) = settled();
        assert_eq!(audit(&history, &snapshot), Vec::<String>::new());
    }

    #[test]
    fn a_lost_acknowledged_booking_is_caught() {
        let (history, mut snapshot) = settled();
        snapshot.reservations.retain(|r| r.reservation_id != "r1");
        let found = audit(&history, &snapshot);
        assert!(
            found.iter().any(|v| v.contains("acknowledged booking r1")),
            "{found:?}"
        );
        // Its money is now without a booking, too.
        assert!(
            found.iter().any(|v| v.contains("has no reservation")),
            "{found:?}"
        );
    }

    #[test]
    fn a_double_charge_is_caught() {
        let (history, mut snapshot) = settled();
        snapshot.payments.push(Payment {
            payment_id: "p1-again".into(),
            ..snapshot.payments[0].clone()
        });
        let found = audit(&history, &snapshot);
        assert!(
            found.iter().any(|v| v.contains("r1 has 2 payments")),
            "{found:?}"
        );
    }

    #[test]
    fn money_for_a_rejected_booking_is_caught() {
        let (history, mut snapshot) = settled();
        snapshot.reservations[0].state = "REJECTED".into();
        let found = audit(&history, &snapshot);
        assert!(
            found
                .iter()
                .any(|v| v.contains("REJECTED but its payment is APPROVED")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|v| v.contains("acknowledged booking r1 is REJECTED"))
        );
    }

    #[test]
    fn a_wrong_amount_is_caught() {
        let (history, mut snapshot) = settled();
        snapshot.payments[0].units = Some(5_000);
        assert!(
            audit(&history, &snapshot)
                .iter()
                .any(|v| v.contains("wrong amount"))
        );
    }

    #[test]
    fn a_refund_not_made_or_made_twice_is_caught() {
        let (history, mut snapshot) = settled();
        snapshot.payments[1].state = "APPROVED".into();
        assert!(
            audit(&history, &snapshot)
                .iter()
                .any(|v| v.contains("CANCELLED with 0 refunded"))
        );
        let (history, mut snapshot) = settled();
        snapshot
            .notifications
            .push(snapshot.notifications[2].clone());
        let found = audit(&history, &snapshot);
        assert!(
            found.iter().any(|v| v.contains("2 refund notifications")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|v| v.contains("e3 (payment.cancelled): 2"))
        );
    }

    #[test]
    fn a_missing_notification_a_stale_page_and_a_full_queue_are_caught() {
        let (history, mut snapshot) = settled();
        snapshot.notifications.remove(0);
        snapshot.views.insert("r1".into(), "CANCELLED".into());
        snapshot.queues.insert("faults.payment.dead".into(), 3);
        let found = audit(&history, &snapshot);
        assert!(found.iter().any(|v| v.contains("e1 (payment.approved): 0")));
        assert!(
            found
                .iter()
                .any(|v| v.contains("my page shows r1 as CANCELLED"))
        );
        assert!(
            found
                .iter()
                .any(|v| v.contains("3 messages left in faults.payment.dead"))
        );
    }

    #[test]
    fn a_pending_reservation_is_caught() {
        let (history, mut snapshot) = settled();
        snapshot.reservations.push(Reservation {
            reservation_id: "r9".into(),
            customer_id: "c9".into(),
            state: "PENDING_PAYMENT".into(),
            units: 50_000,
            currency: "KRW".into(),
        });
        assert!(
            audit(&history, &snapshot)
                .iter()
                .any(|v| v.contains("r9 is still PENDING_PAYMENT"))
        );
    }
}
