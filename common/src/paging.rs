//! List paging (AIP-158): `page_size` (0 = the default, capped at the
//! maximum) and an opaque `page_token` that resumes after the last item
//! returned. The token holds the sort key of that item: an instant and an id.

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::ApiError;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Where a list sorted by `(instant, id)` continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: NaiveDateTime,
    pub id: String,
}

/// A parsed page request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    pub after: Option<Cursor>,
}

impl Page {
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, ApiError> {
        let size = match i64::from(page_size) {
            n if n < 0 => return Err(ApiError::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            "" => None,
            token => Some(decode(token).ok_or_else(|| {
                ApiError::invalid("page_token", "is not a token this list returned")
            })?),
        };
        Ok(Self { size, after })
    }

    /// Rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// Trims `items` to the page and returns the token of the next page ("" at the end).
    pub fn finish<T>(
        &self,
        items: &mut Vec<T>,
        key: impl Fn(&T) -> (DateTime<Utc>, String),
    ) -> String {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if items.len() <= size {
            return String::new();
        }
        items.truncate(size);
        items.last().map_or_else(String::new, |last| {
            let (at, id) = key(last);
            encode(&Cursor {
                at: at.naive_utc(),
                id,
            })
        })
    }
}

fn encode(cursor: &Cursor) -> String {
    let plain = format!("{}|{}", cursor.at.and_utc().timestamp_micros(), cursor.id);
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode(token: &str) -> Option<Cursor> {
    if !token.len().is_multiple_of(2) || token.len() > 512 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let plain = String::from_utf8(bytes?).ok()?;
    let (micros, id) = plain.split_once('|')?;
    let at = DateTime::from_timestamp_micros(micros.parse().ok()?)?.naive_utc();
    Some(Cursor {
        at,
        id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() -> Result<(), ApiError> {
        let page = Page::parse(2, "")?;
        let at = crate::time::now();
        let mut items = vec![(at, "a"), (at, "b"), (at, "c")];
        let token = page.finish(&mut items, |(at, id)| (*at, (*id).to_owned()));
        assert_eq!(items.len(), 2);
        let next = Page::parse(2, &token)?;
        assert_eq!(
            next.after,
            Some(Cursor {
                at: at.naive_utc(),
                id: "b".into()
            })
        );
        assert!(Page::parse(0, "zz").is_err());
        assert!(Page::parse(-1, "").is_err());
        assert_eq!(Page::parse(0, "")?.size, DEFAULT_PAGE_SIZE);
        assert_eq!(Page::parse(10_000, "")?.size, MAX_PAGE_SIZE);
        Ok(())
    }

    #[test]
    fn the_last_page_has_no_token() -> Result<(), ApiError> {
        let page = Page::parse(5, "")?;
        let mut items = vec![(crate::time::now(), "a")];
        assert_eq!(
            page.finish(&mut items, |(at, id)| (*at, (*id).to_owned())),
            ""
        );
        Ok(())
    }
}
