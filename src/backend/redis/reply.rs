//! Reading Redis replies: a reply of a shape this library does not expect is an error or
//! garbage, never a panic.

use redis::Value;

use crate::backend::{is_lease, Lookup, Marker};
use crate::error::Error;
use crate::kind::Shape;
use crate::value::Payload;

pub(super) fn is_auth_error(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
}

pub(super) fn is_wrong_type(e: &redis::RedisError) -> bool {
    e.code() == Some("WRONGTYPE")
}

/// A reply of a shape this library does not expect: treated like garbage, never a panic.
pub(super) fn unexpected(what: &'static str) -> Error {
    Error::UnexpectedReply(what)
}

pub(super) fn into_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

pub(super) fn into_elems(v: Value) -> Option<Vec<Vec<u8>>> {
    match v {
        Value::Array(items) | Value::Set(items) => items.into_iter().map(into_bytes).collect(),
        _ => None,
    }
}

pub(super) fn into_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// The milliseconds a PTTL reply gives the entry: `None` for no expiry (-1); 0 for an entry
/// gone since it was read (-2) and for a reply that is no TTL, so that nothing read with it
/// outlives the entry.
pub(super) fn pttl_ms(v: &Value) -> Option<u64> {
    match into_i64(v) {
        Some(-1) => None,
        Some(ms) => Some(u64::try_from(ms).unwrap_or(0)),
        None => Some(0),
    }
}

/// Turns a read of a string value into a lookup.
pub(super) fn string_lookup(v: Value) -> Lookup {
    match v {
        Value::Nil => Lookup::Miss,
        other => match into_bytes(other) {
            Some(b) if is_lease(&b) => Lookup::Leased(Marker::new(b)),
            Some(b) => Lookup::Hit(Payload::Bytes(b)),
            None => Lookup::Garbage,
        },
    }
}

/// Parses `{code, value?}` replies of the acquire and read scripts.
pub(super) fn coded_reply(v: Value, shape: Shape) -> Result<(i64, Option<Payload>), Error> {
    let Value::Array(mut items) = v else {
        return Err(unexpected("script reply is not an array"));
    };
    let code = items
        .first()
        .and_then(into_i64)
        .ok_or_else(|| unexpected("script reply code"))?;
    let payload = if items.len() > 1 {
        let value = items.swap_remove(1);
        Some(match shape {
            Shape::Str | Shape::Hash => {
                Payload::Bytes(into_bytes(value).ok_or_else(|| unexpected("script reply value"))?)
            }
            Shape::List | Shape::Set => {
                Payload::Elems(into_elems(value).ok_or_else(|| unexpected("script reply members"))?)
            }
        })
    } else {
        None
    };
    Ok((code, payload))
}

pub(super) fn opt_u64(v: Value) -> Result<Option<u64>, Error> {
    match v {
        Value::Nil => Ok(None),
        Value::Int(i) => Ok(Some(i.max(0) as u64)),
        _ => Err(unexpected("expected an integer or nil")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pttl_reply_never_gives_more_time_than_the_entry_has() {
        assert_eq!(pttl_ms(&Value::Int(1500)), Some(1500));
        assert_eq!(pttl_ms(&Value::Int(-1)), None, "no expiry");
        assert_eq!(pttl_ms(&Value::Int(-2)), Some(0), "gone since it was read");
        assert_eq!(pttl_ms(&Value::Nil), Some(0), "not a TTL");
    }

    #[test]
    fn replies_of_unexpected_shape_are_errors_not_panics() {
        assert!(coded_reply(Value::Nil, Shape::Str).is_err());
        assert!(coded_reply(Value::Array(vec![]), Shape::Str).is_err());
        assert!(coded_reply(
            Value::Array(vec![Value::Int(2), Value::Int(5)]),
            Shape::List
        )
        .is_err());
        assert!(matches!(string_lookup(Value::Int(3)), Lookup::Garbage));
        assert!(matches!(
            string_lookup(Value::BulkString(b"\xC1cacheobj:lease:x".to_vec())),
            Lookup::Leased(_)
        ));
        assert!(opt_u64(Value::Okay).is_err());
    }
}
