//! Instants: `chrono::DateTime<Utc>` in the domain, `google.protobuf.Timestamp`
//! on the wire, a UTC `NaiveDateTime` in the database (the one timestamp type
//! that diesel maps on both PostgreSQL and SQLite).

use chrono::{DateTime, NaiveDateTime, Utc};
use prost_types::Timestamp;

/// Converts a domain instant to its wire form.
pub fn to_timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a wire instant to the domain's, or `None` when it is out of range.
pub fn from_timestamp(ts: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// Reads a stored (UTC) database timestamp.
pub fn from_db(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

/// The current instant truncated to microseconds, the resolution both databases store,
/// so that what is returned equals what is read back later.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    let micros = now.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_the_instant() {
        let at = now();
        assert_eq!(from_timestamp(&to_timestamp(at)), Some(at));
    }

    #[test]
    fn negative_nanos_are_out_of_range() {
        let ts = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(from_timestamp(&ts), None);
    }
}
