//! A nesting limit for any serde `Deserializer`.
//!
//! Decoding recurses once per nested value, so a hostile value of a recursive type (anyone can
//! write to Redis) nested deeply enough overflows the stack and aborts the process. postcard has
//! no limit of its own, and rmp-serde's does not count enums. Growing the stack instead
//! (`serde_stacker`) is not enough: the decoded value would overflow it again when dropped.
//!
//! [`Limited`] wraps the deserializer and everything it hands out (visitors, sequence, map and
//! enum accesses, seeds) and counts the nested values a visitor enters (`Some`, newtype
//! structs, sequences, maps, enums): past [`MAX_DEPTH`] it fails before recursing further.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};

/// How many nested values a decoded value may have, for both codecs. Cached values are never
/// this deep; 128 levels fit a 2 MiB thread stack in unoptimized builds.
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a limited decode failed.
#[derive(Debug)]
pub(crate) enum Error<E> {
    /// The value nests deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The inner deserializer's (or the value type's) error.
    Inner(E),
}

/// Runs `f` on `de` wrapped in a [`Limited`] with [`MAX_DEPTH`] levels to go.
///
/// The limit fails with a custom error of the inner deserializer's type (the only type the
/// visitors can return), which may not keep its message (postcard's does not), so a flag shared
/// by every wrapper of this decode tells [`Error::TooDeep`] apart.
pub(crate) fn with_limit<'de, D, R>(
    de: D,
    f: impl FnOnce(Limited<'_, D>) -> Result<R, D::Error>,
) -> Result<R, Error<D::Error>>
where
    D: Deserializer<'de>,
{
    let tripped = Cell::new(false);
    let depth = Depth {
        left: MAX_DEPTH,
        tripped: &tripped,
    };
    f(depth.wrap(de)).map_err(|e| {
        if tripped.get() {
            Error::TooDeep
        } else {
            Error::Inner(e)
        }
    })
}

/// The levels left below the current value, and where to note that the limit was hit.
#[derive(Clone, Copy)]
struct Depth<'a> {
    left: usize,
    tripped: &'a Cell<bool>,
}

impl<'a> Depth<'a> {
    /// `inner`, passing this depth on.
    fn wrap<T>(self, inner: T) -> Limited<'a, T> {
        Limited { inner, depth: self }
    }

    /// One level down, or an error once no level is left.
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        match self.left.checked_sub(1) {
            Some(left) => Ok(Depth { left, ..self }),
            None => {
                self.tripped.set(true);
                Err(E::custom(format_args!(
                    "value nests deeper than {MAX_DEPTH} levels"
                )))
            }
        }
    }
}

/// A deserializer, visitor, access or seed that passes the current depth on to whatever it
/// hands out, so every path into a nested value goes through [`Depth::enter`].
pub(crate) struct Limited<'a, T> {
    inner: T,
    depth: Depth<'a>,
}

impl<T: fmt::Debug> fmt::Debug for Limited<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limited")
            .field("inner", &self.inner)
            .field("left", &self.depth.left)
            .finish()
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.depth.wrap(visitor);
            self.inner.$method($($arg,)* visitor)
        }
    )*};
}

// The deserializer: every request goes to the inner one with a limited visitor.
impl<'de, D: Deserializer<'de>> Deserializer<'de> for Limited<'_, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str); deserialize_seq();
        deserialize_tuple(len: usize); deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map(); deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier(); deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

// The visitor: values that contain others go one level down first; the rest pass through
// unchanged (borrowed strings and bytes stay borrowed).
impl<'de, V: Visitor<'de>> Visitor<'de> for Limited<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    forward_visit! {
        visit_bool(bool); visit_i8(i8); visit_i16(i16); visit_i32(i32); visit_i64(i64);
        visit_i128(i128); visit_u8(u8); visit_u16(u16); visit_u32(u32); visit_u64(u64);
        visit_u128(u128); visit_f32(f32); visit_f64(f64); visit_char(char); visit_str(&str);
        visit_borrowed_str(&'de str); visit_string(String); visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.enter()?;
        self.inner.visit_some(depth.wrap(de))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let depth = self.depth.enter()?;
        self.inner.visit_newtype_struct(depth.wrap(de))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.enter()?;
        self.inner.visit_seq(depth.wrap(seq))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.enter()?;
        self.inner.visit_map(depth.wrap(map))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let depth = self.depth.enter()?;
        self.inner.visit_enum(depth.wrap(data))
    }
}

// The accesses and seeds: the elements, keys, values and variants of a nested value are read
// at its depth.
impl<'de, A: de::SeqAccess<'de>> de::SeqAccess<'de> for Limited<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.inner.next_element_seed(self.depth.wrap(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: de::MapAccess<'de>> de::MapAccess<'de> for Limited<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.inner.next_key_seed(self.depth.wrap(seed))
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.inner.next_value_seed(self.depth.wrap(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: de::EnumAccess<'de>> de::EnumAccess<'de> for Limited<'a, A> {
    type Error = A::Error;
    type Variant = Limited<'a, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let depth = self.depth;
        let (value, variant) = self.inner.variant_seed(depth.wrap(seed))?;
        Ok((value, depth.wrap(variant)))
    }
}

impl<'de, A: de::VariantAccess<'de>> de::VariantAccess<'de> for Limited<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }
    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(self.depth.wrap(seed))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, self.depth.wrap(visitor))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, self.depth.wrap(visitor))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Limited<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(self.depth.wrap(de))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde::Deserialize;

    /// Each level is one sequence: `levels` nested sequences are `levels - 1` one-element
    /// lengths and an empty one in postcard.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(transparent)]
    struct Nest(Vec<Nest>);

    fn nest_bytes(levels: usize) -> Vec<u8> {
        let mut bytes = vec![1u8; levels - 1];
        bytes.push(0);
        bytes
    }

    fn postcard<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error<postcard::Error>> {
        with_limit(&mut postcard::Deserializer::from_bytes(bytes), |de| {
            T::deserialize(de)
        })
    }

    /// Runs `f` on a thread with a test thread's default stack (2 MiB), whatever
    /// `RUST_MIN_STACK` says.
    pub(crate) fn on_2mib_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn max_depth_levels_decode_one_more_does_not() {
        on_2mib_stack(|| {
            let mut nest = postcard::<Nest>(&nest_bytes(MAX_DEPTH)).unwrap();
            let mut levels = 1;
            while let Some(inner) = nest.0.pop() {
                nest = inner;
                levels += 1;
            }
            assert_eq!(levels, MAX_DEPTH);
            let err = postcard::<Nest>(&nest_bytes(MAX_DEPTH + 1)).unwrap_err();
            assert!(matches!(err, Error::TooDeep), "{err:?}");
        });
    }

    #[test]
    fn a_hundred_thousand_levels_are_an_error_not_a_stack_overflow() {
        on_2mib_stack(|| {
            let err = postcard::<Nest>(&nest_bytes(100_000)).unwrap_err();
            assert!(matches!(err, Error::TooDeep), "{err:?}");
        });
    }

    #[test]
    fn other_errors_pass_through() {
        // Truncated: the innermost length is missing.
        let err = postcard::<Nest>(&[1, 1]).unwrap_err();
        assert!(
            matches!(err, Error::Inner(postcard::Error::DeserializeUnexpectedEnd)),
            "{err:?}"
        );
    }

    #[test]
    fn borrowed_data_stays_borrowed() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Borrowing<'a> {
            name: &'a str,
            raw: &'a [u8],
            tags: Vec<&'a str>,
        }
        let bytes = postcard::to_stdvec(&("ab", b"cd".as_slice(), vec!["ef"])).unwrap();
        let value = postcard::<Borrowing<'_>>(&bytes).unwrap();
        assert_eq!(
            value,
            Borrowing {
                name: "ab",
                raw: b"cd",
                tags: vec!["ef"]
            }
        );
    }

    /// The wrapper is not tied to postcard: with rmp-serde (its own limit is 1024), skipping a
    /// deep value (`deserialize_ignored_any`, visited as sequences) stops at the limit too.
    #[test]
    fn limits_any_deserializer() {
        on_2mib_stack(|| {
            let mut bytes = vec![0x91u8; 100_000];
            bytes.push(0x90);
            let mut de = rmp_serde::Deserializer::from_read_ref(&bytes[..]);
            let err = with_limit(&mut de, |d| de::IgnoredAny::deserialize(d)).unwrap_err();
            let Error::TooDeep = err else {
                panic!("{err:?}")
            };
            let ok = &bytes[bytes.len() - MAX_DEPTH..];
            let mut de = rmp_serde::Deserializer::from_read_ref(ok);
            assert!(with_limit(&mut de, |d| de::IgnoredAny::deserialize(d)).is_ok());
        });
    }
}
