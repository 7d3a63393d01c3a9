//! Every validation rule of CreateReservation: INVALID_ARGUMENT naming the field, nothing stored.

use chrono::Utc;
use ssak3_common::{auth::Role, time};
use ssak3_proto::reservation::v1 as pb;
use tonic::Code;

use crate::support::{Backend, Mesh, Options, TestResult, as_user, booking};

/// Breaks one field of a valid request.
type Breakage = Box<dyn Fn(&mut pb::CreateReservationRequest)>;

#[tokio::test]
async fn invalid_bookings_name_the_field_and_store_nothing() -> TestResult {
    let mesh = Mesh::start(Options::new(Backend::Sqlite)).await;
    let mut client = mesh.reservations().await;
    let cases: Vec<(&str, Breakage)> = vec![
        ("request_id", Box::new(|r| r.request_id.clear())),
        ("request_id", Box::new(|r| r.request_id = "k".repeat(129))),
        (
            "request_id",
            Box::new(|r| r.request_id = "has spaces".into()),
        ),
        ("cleaner_id", Box::new(|r| r.cleaner_id.clear())),
        ("cleaner_id", Box::new(|r| r.cleaner_id = "c".repeat(65))),
        ("address", Box::new(|r| r.address = "   ".into())),
        ("address", Box::new(|r| r.address = "a".repeat(301))),
        ("scheduled_at", Box::new(|r| r.scheduled_at = None)),
        (
            "scheduled_at",
            Box::new(|r| {
                r.scheduled_at = Some(time::to_timestamp(Utc::now() - chrono::Duration::hours(1)))
            }),
        ),
        (
            "scheduled_at",
            Box::new(|r| {
                r.scheduled_at = Some(time::to_timestamp(Utc::now() + chrono::Duration::days(400)))
            }),
        ),
        (
            "service_type",
            Box::new(|r| r.service_type = pb::ServiceType::Unspecified as i32),
        ),
        ("service_type", Box::new(|r| r.service_type = 42)),
        ("note", Box::new(|r| r.note = "n".repeat(1001))),
    ];
    for (field, break_it) in cases {
        let mut request = booking("req-valid");
        break_it(&mut request);
        let status = client
            .create_reservation(as_user("alice", Role::Customer, request))
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted a booking with a bad {field}"));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{field}: {}",
            status.message()
        );
        assert!(
            status.message().contains(field),
            "message does not name {field}: {}",
            status.message()
        );
    }
    assert_eq!(mesh.stored_count().await, 0);
    assert_eq!(mesh.gateway.approved_charges(), 0);

    let status = client
        .get_reservation(as_user(
            "alice",
            Role::Customer,
            pb::GetReservationRequest::default(),
        ))
        .await
        .err()
        .map(|s| (s.code(), s.message().contains("reservation_id")));
    assert_eq!(status, Some((Code::InvalidArgument, true)));
    Ok(())
}
