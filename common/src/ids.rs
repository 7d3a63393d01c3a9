//! The identifiers every service shares, with one grammar and one parse
//! function: 1–64 characters (128 for a client's request id) of ASCII
//! letters, digits and `.` `_` `:` `-`. A value is valid exactly as it is or
//! refused naming its field; ids are never trimmed or otherwise changed, so
//! the id a caller sent, the id stored and the id in a token's subject are
//! the same string.

use std::fmt;

/// A value refused on the way in: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

impl Invalid {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// The longest id Ssak3 accepts (reservation, customer, company, payment).
pub const MAX_ID_LEN: usize = 64;
/// The longest idempotency key a client may choose.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The grammar of every id: `[A-Za-z0-9._:-]{1,max}`. The reason never
/// repeats the value, so a hostile input is not echoed back.
pub fn check_identifier(field: &'static str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(Invalid::new(field, "is required"));
    }
    if value.len() > max {
        return Err(Invalid::new(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Invalid::new(
            field,
            "may contain only letters, digits and . _ : -",
        ));
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, max = $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The request field this id usually arrives in.
            pub const FIELD: &'static str = $field;

            /// Parses a value of the field [`Self::FIELD`].
            pub fn parse(value: &str) -> Result<Self, Invalid> {
                Self::parse_field(Self::FIELD, value)
            }

            /// Parses a value that arrived in `field`.
            pub fn parse_field(field: &'static str, value: &str) -> Result<Self, Invalid> {
                check_identifier(field, value, $max)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

identifier!(
    /// A reservation: a UUID the reservation service issues.
    ReservationId, field = "reservation_id", max = MAX_ID_LEN
);
identifier!(
    /// A customer: the subject of a customer's token.
    CustomerId, field = "customer_id", max = MAX_ID_LEN
);
identifier!(
    /// A cleaning company: the subject of a cleaner's token; `cleaner_id` in the API.
    CompanyId, field = "cleaner_id", max = MAX_ID_LEN
);
identifier!(
    /// A payment: a UUID the payment service issues.
    PaymentId, field = "payment_id", max = MAX_ID_LEN
);
identifier!(
    /// The idempotency key a client chooses for a booking.
    RequestId, field = "request_id", max = MAX_REQUEST_ID_LEN
);
identifier!(
    /// Whom a token speaks for (its `sub`): a customer, a company or a service.
    Subject, field = "sub", max = MAX_ID_LEN
);

/// A fresh id for something this system creates (a reservation, a payment,
/// an event, a notification): a UUID of version 7, which begins with the
/// millisecond it was made. Ids made in later milliseconds sort after, so
/// each index on them grows at its end: a batch of new rows adds to the
/// last page of the index instead of a page per row somewhere in it, which
/// on SQLite halved the bytes written per booking. The other 74 bits are
/// random for every id (no counter shared between ids, which would tell
/// how many were made between two), so an id is no easier to guess; what
/// it tells is when it was made, as the object's own create time does.
pub fn fresh() -> String {
    uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext)).to_string()
}

impl ReservationId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(fresh())
    }
}

impl Default for ReservationId {
    fn default() -> Self {
        Self::new()
    }
}

impl PaymentId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(fresh())
    }
}

impl Default for PaymentId {
    fn default() -> Self {
        Self::new()
    }
}

// A subject passed the same grammar, so it is a valid customer or company id.
impl From<Subject> for CustomerId {
    fn from(subject: Subject) -> Self {
        Self(subject.0)
    }
}

impl From<Subject> for CompanyId {
    fn from(subject: Subject) -> Self {
        Self(subject.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_sort_in_the_order_they_were_made() {
        let made: Vec<String> = (0..50)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                fresh()
            })
            .collect();
        let mut sorted = made.clone();
        sorted.sort();
        assert_eq!(made, sorted, "each index on them grows at its end");
        assert!(ReservationId::parse(&made[0]).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(ReservationId::new().as_str() > made[49].as_str());
        assert!(PaymentId::new().as_str() > made[49].as_str());
    }

    #[test]
    fn fresh_ids_of_one_millisecond_share_no_counter() {
        // With a counter shared between ids (the uuid crate's `now_v7`),
        // the ids of one millisecond share the bits after the time (the
        // counter's top bits): 64 ids made at once would show one or two
        // values there.
        let ids: Vec<uuid::Uuid> = (0..64).map(|_| fresh().parse().expect("a UUID")).collect();
        let random_a =
            |id: &uuid::Uuid| u16::from_be_bytes([id.as_bytes()[6], id.as_bytes()[7]]) & 0x0fff;
        let distinct: std::collections::HashSet<u16> = ids.iter().map(random_a).collect();
        assert!(distinct.len() > 32, "{} distinct of 64", distinct.len());
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
    }

    #[test]
    fn one_grammar_for_every_id() {
        for (value, ok) in [
            ("alice", true),
            ("acme-cleaning", true),
            ("0b6c5a2e-7f1d-4c8e-9a43-1f0e2d3c4b5a", true),
            ("a.b_c:d-e", true),
            ("", false),
            ("alice ", false),
            (" alice", false),
            ("has space", false),
            ("ünïcode", false),
            ("a/b", false),
            ("a\"b", false),
        ] {
            assert_eq!(CustomerId::parse(value).is_ok(), ok, "{value:?}");
            assert_eq!(Subject::parse(value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn lengths_are_bounded_and_refusals_name_the_field_without_the_value() {
        assert!(ReservationId::parse(&"a".repeat(MAX_ID_LEN)).is_ok());
        let long = "x".repeat(MAX_ID_LEN + 1);
        let refused = ReservationId::parse(&long).err();
        assert_eq!(refused.as_ref().map(|e| e.field), Some("reservation_id"));
        assert!(
            !refused
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains(&long)
        );
        assert!(RequestId::parse(&"r".repeat(MAX_REQUEST_ID_LEN)).is_ok());
        assert!(RequestId::parse(&"r".repeat(MAX_REQUEST_ID_LEN + 1)).is_err());
        assert_eq!(CompanyId::parse("").map_err(|e| e.field), Err("cleaner_id"));
        assert_eq!(
            CompanyId::parse_field("company_id", "").map_err(|e| e.field),
            Err("company_id")
        );
    }

    #[test]
    fn issued_ids_obey_the_grammar() {
        assert!(ReservationId::parse(ReservationId::new().as_str()).is_ok());
        assert!(PaymentId::parse(PaymentId::new().as_str()).is_ok());
    }
}
