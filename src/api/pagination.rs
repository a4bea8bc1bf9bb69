//! Shared list conventions: `limit` (1-200, default 50), an opaque `cursor` from the previous
//! page's `next_cursor`, and `sort` by name ascending or descending.

use base64::Engine;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::{Error, Result};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// The order of a list: by name ascending (`name`) or descending (`-name`).
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
pub enum SortByName {
    #[default]
    #[serde(rename = "name")]
    Ascending,
    #[serde(rename = "-name")]
    Descending,
}

pub fn limit(requested: Option<u32>) -> Result<i64> {
    match requested.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(i64::from(n)),
        _ => Err(Error::field(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

/// The largest `offset` a list takes (the document says int32).
pub const MAX_OFFSET: u32 = i32::MAX as u32;

pub fn offset(requested: Option<u32>) -> Result<i64> {
    match requested.unwrap_or(0) {
        n @ 0..=MAX_OFFSET => Ok(i64::from(n)),
        _ => Err(Error::field(
            "offset",
            format!("must be between 0 and {MAX_OFFSET}"),
        )),
    }
}

/// Cursors are opaque to clients: base64url of the last key of the page.
pub fn encode_cursor(last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_key)
}

pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<String>> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| Error::field("cursor", "is not a cursor this service returned"))
}

/// The keyset page a list query asks for.
pub fn name_page(
    sort: Option<SortByName>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<crate::db::NamePage> {
    Ok(crate::db::NamePage {
        after_name: decode_cursor(cursor)?
            .map(|name| {
                // Names are slugs; anything else did not come from this service.
                crate::domain::validation::is_name(&name)
                    .then_some(name)
                    .ok_or_else(|| Error::field("cursor", "is not a cursor this service returned"))
            })
            .transpose()?,
        descending: sort == Some(SortByName::Descending),
        limit,
    })
}

/// The cursor for the next page, when this page was full.
pub fn next_cursor(page_len: usize, limit: i64, last_key: Option<&str>) -> Option<String> {
    (page_len as i64 == limit)
        .then_some(last_key)
        .flatten()
        .map(encode_cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_field_error() {
        let c = encode_cursor("web01");
        assert_eq!(decode_cursor(Some(&c)).unwrap().as_deref(), Some("web01"));
        assert!(decode_cursor(Some("%%%")).is_err());
        assert_eq!(decode_cursor(None).unwrap(), None);
        assert!(
            name_page(None, Some("AA"), 5).is_err(),
            "a NUL name is refused"
        );
    }

    #[test]
    fn limit_is_bounded() {
        assert_eq!(limit(None).unwrap(), 50);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(201)).is_err());
    }

    #[test]
    fn offset_is_bounded_by_what_the_document_declares() {
        assert_eq!(offset(None).unwrap(), 0);
        assert_eq!(offset(Some(MAX_OFFSET)).unwrap(), i64::from(i32::MAX));
        assert!(offset(Some(MAX_OFFSET + 1)).is_err());
    }

    #[test]
    fn a_short_page_has_no_next_cursor() {
        assert_eq!(next_cursor(2, 5, Some("b")), None);
        assert_eq!(next_cursor(5, 5, Some("e")), Some(encode_cursor("e")));
    }
}
