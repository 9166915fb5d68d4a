//! JSON bodies with a key written twice are refused: serde keeps the last value of a repeated key,
//! so `{"outcome": "done", "outcome": "refer_up"}` would mean whatever the parser's order makes it,
//! and two systems reading one body could disagree about what it says.

use std::collections::HashSet;
use std::fmt;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::{ApiError, MAX_BODY};

/// Reads a JSON request body once, refuses it (400) when an object in it repeats a key, and hands
/// the same bytes on. Bodies that do not parse are left to the handler, which says why.
pub(crate) async fn reject_duplicate_keys(req: Request, next: Next) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json") || v.starts_with("application/fhir+json")
        });
    if !json {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::PayloadTooLarge("the request body is larger than 1 MiB".into())
                .into_response();
        }
    };
    if let Some(key) = duplicate_key(&bytes) {
        return ApiError::BadRequest(format!(
            "the JSON body repeats the key `{key}`; write each key of an object once"
        ))
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The first key some object of `bytes` repeats; `None` when there is none or it is not JSON.
pub(crate) fn duplicate_key(bytes: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match Unique.deserialize(&mut de) {
        Err(e) if e.classify() == serde_json::error::Category::Data => Some(
            e.to_string()
                .split('`')
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        ),
        _ => None,
    }
}

/// Walks any JSON value, failing on the first object that repeats a key.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value_seed(Unique)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_key;

    #[test]
    fn a_repeated_key_is_found_at_any_depth() {
        assert_eq!(duplicate_key(br#"{"a": 1, "a": 2}"#).as_deref(), Some("a"));
        assert_eq!(
            duplicate_key(br#"[{"x": {"k": [1, {"q": 1, "q": 1}]}}]"#).as_deref(),
            Some("q")
        );
        assert_eq!(duplicate_key(br#"{"a": {"b": 1}, "b": {"a": 2}}"#), None);
        assert_eq!(duplicate_key(br#"{"a": "\u0061", "\u0061b": 1}"#), None);
        // Escaped spellings of one key are one key.
        assert_eq!(
            duplicate_key(br#"{"ab": 1, "\u0061b": 2}"#).as_deref(),
            Some("ab")
        );
        // Not JSON: left to the handler.
        assert_eq!(duplicate_key(b"{not json"), None);
    }
}
