//! What each kind of strategy can hold, and how it is encoded.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash as StdHash};

use serde::de::DeserializeOwned;
use serde::ser::{self, Impossible, Serialize};

use crate::codec::{decode_text, encode_text, Codec};
use crate::error::CodecError;
use crate::kind::{Counter, Hash, Kind, List, Obj, Set};

/// What only this crate may name: how values are stored. Users pick value types, they do not
/// implement their encoding.
mod sealed {
    use crate::codec::Codec;
    use crate::error::CodecError;

    /// A value as stored: one byte string, or the elements of a list or set.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Payload {
        Bytes(Vec<u8>),
        Elems(Vec<Vec<u8>>),
    }

    /// How a value of kind `Kd` is stored.
    pub trait Stored<Kd>: Sized {
        fn encode(&self, codec: Codec) -> Result<Payload, CodecError>;
        fn decode(payload: &Payload, codec: Codec) -> Result<Self, CodecError>;
        /// Whether the value means "not found": `None` or an empty collection.
        fn is_negative(&self) -> bool;
    }
}

pub(crate) use sealed::Payload;
use sealed::Stored;

/// A collection that list and set strategies can hold: `Vec`, `VecDeque`, `HashSet` or
/// `BTreeSet` of serde elements.
///
/// # Examples
///
/// ```
/// use cacheobj::{CacheKey, List, Strategy};
/// # #[derive(serde::Serialize, CacheKey)] struct GroupKey { group_id: u64 }
/// // `Vec<u64>` is a Collection with `Elem = u64`.
/// const MEMBERS: Strategy<Vec<u64>, GroupKey, List> = Strategy::list("members:<group_id>");
/// # let _ = MEMBERS;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a collection that a list or set strategy can hold",
    label = "a list or set strategy holds a `Vec`, `VecDeque`, `HashSet` or `BTreeSet`",
    note = "hold `Vec<T>`, `VecDeque<T>`, `HashSet<T>` or `BTreeSet<T>` of serde elements, or use an obj strategy for one value"
)]
pub trait Collection: Sized {
    /// The element type.
    type Elem: Serialize + DeserializeOwned;
    /// The elements, in order.
    fn elems(&self) -> impl Iterator<Item = &Self::Elem>;
    /// Builds the collection from elements read back, in stored order.
    fn from_elems(elems: Vec<Self::Elem>) -> Self;
}

impl<T: Serialize + DeserializeOwned> Collection for Vec<T> {
    type Elem = T;
    fn elems(&self) -> impl Iterator<Item = &T> {
        self.iter()
    }
    fn from_elems(elems: Vec<T>) -> Self {
        elems
    }
}

impl<T: Serialize + DeserializeOwned> Collection for VecDeque<T> {
    type Elem = T;
    fn elems(&self) -> impl Iterator<Item = &T> {
        self.iter()
    }
    fn from_elems(elems: Vec<T>) -> Self {
        elems.into()
    }
}

impl<T, S> Collection for HashSet<T, S>
where
    T: Serialize + DeserializeOwned + Eq + StdHash,
    S: BuildHasher + Default,
{
    type Elem = T;
    fn elems(&self) -> impl Iterator<Item = &T> {
        self.iter()
    }
    fn from_elems(elems: Vec<T>) -> Self {
        elems.into_iter().collect()
    }
}

impl<T: Serialize + DeserializeOwned + Ord> Collection for BTreeSet<T> {
    type Elem = T;
    fn elems(&self) -> impl Iterator<Item = &T> {
        self.iter()
    }
    fn from_elems(elems: Vec<T>) -> Self {
        elems.into_iter().collect()
    }
}

/// A value that strategies of kind `Kd` can cache. Implemented for every serde type (obj,
/// counter and hash kinds) and every [`Collection`] (list and set kinds); not for you to
/// implement.
///
/// # Examples
///
/// ```
/// fn cacheable<V: cacheobj::CacheValue<cacheobj::Obj>>() {}
/// cacheable::<Option<String>>();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a value that `{Kd}` strategies can cache",
    label = "not a value this strategy can cache",
    note = "obj, counter and hash values derive `Serialize` and `Deserialize`; list and set values are a `Vec`, `VecDeque`, `HashSet` or `BTreeSet` of such elements"
)]
pub trait CacheValue<Kd: Kind>: Stored<Kd> {}

fn bytes(payload: &Payload) -> Result<&[u8], CodecError> {
    match payload {
        Payload::Bytes(b) => Ok(b),
        Payload::Elems(_) => Err(CodecError::Text("single value")),
    }
}

/// Obj and hash values: the strategy's codec.
macro_rules! codec_value {
    ($($kind:ty),*) => {$(
        impl<V: Serialize + DeserializeOwned> CacheValue<$kind> for V {}
        impl<V: Serialize + DeserializeOwned> Stored<$kind> for V {
            fn encode(&self, codec: Codec) -> Result<Payload, CodecError> {
                codec.encode(self).map(Payload::Bytes)
            }
            fn decode(payload: &Payload, codec: Codec) -> Result<Self, CodecError> {
                codec.decode(bytes(payload)?)
            }
            fn is_negative(&self) -> bool {
                is_none(self)
            }
        }
    )*};
}

codec_value!(Obj, Hash);

impl<V: Serialize + DeserializeOwned> CacheValue<Counter> for V {}
impl<V: Serialize + DeserializeOwned> Stored<Counter> for V {
    fn encode(&self, codec: Codec) -> Result<Payload, CodecError> {
        encode_text(codec, self).map(Payload::Bytes)
    }
    fn decode(payload: &Payload, codec: Codec) -> Result<Self, CodecError> {
        decode_text(codec, bytes(payload)?)
    }
    fn is_negative(&self) -> bool {
        is_none(self)
    }
}

/// List and set values: one plain-text (or codec) element each.
macro_rules! collection_value {
    ($($kind:ty),*) => {$(
        impl<C: Collection> CacheValue<$kind> for C {}
        impl<C: Collection> Stored<$kind> for C {
            fn encode(&self, codec: Codec) -> Result<Payload, CodecError> {
                self.elems()
                    .map(|e| encode_text(codec, e))
                    .collect::<Result<_, _>>()
                    .map(Payload::Elems)
            }
            fn decode(payload: &Payload, codec: Codec) -> Result<Self, CodecError> {
                match payload {
                    Payload::Elems(elems) => elems
                        .iter()
                        .map(|e| decode_text(codec, e))
                        .collect::<Result<Vec<_>, _>>()
                        .map(C::from_elems),
                    Payload::Bytes(_) => Err(CodecError::Text("list or set")),
                }
            }
            fn is_negative(&self) -> bool {
                self.elems().next().is_none()
            }
        }
    )*};
}

collection_value!(List, Set);

/// Whether `value` serializes as `None`: stops at the first serializer call.
fn is_none<V: Serialize + ?Sized>(value: &V) -> bool {
    matches!(value.serialize(NoneProbe), Ok(true))
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not none")
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct NoneProbe;

macro_rules! not_none {
    ($($method:ident($($arg:ty),*);)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<bool, Stop> {
            Ok(false)
        }
    )*};
}

impl ser::Serializer for NoneProbe {
    type Ok = bool;
    type Error = Stop;
    type SerializeSeq = Impossible<bool, Stop>;
    type SerializeTuple = Impossible<bool, Stop>;
    type SerializeTupleStruct = Impossible<bool, Stop>;
    type SerializeTupleVariant = Impossible<bool, Stop>;
    type SerializeMap = Impossible<bool, Stop>;
    type SerializeStruct = Impossible<bool, Stop>;
    type SerializeStructVariant = Impossible<bool, Stop>;

    fn serialize_none(self) -> Result<bool, Stop> {
        Ok(true)
    }

    not_none! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32);
        serialize_u64(u64); serialize_f32(f32); serialize_f64(f64); serialize_char(char);
        serialize_str(&str); serialize_bytes(&[u8]); serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<bool, Stop> {
        Ok(false)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<bool, Stop> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<bool, Stop> {
        Ok(false)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
        Err(Stop)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Stop> {
        Err(Stop)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Stop> {
        Err(Stop)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(Stop)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Stop> {
        Err(Stop)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Stop> {
        Err(Stop)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_negative_and_values_are_not() {
        assert!(is_none(&None::<u32>));
        assert!(!is_none(&Some(0u32)));
        assert!(!is_none(&vec![1u8]));
        assert!(!is_none(&String::new()));
        assert!(<Vec<u64> as Stored<List>>::is_negative(&Vec::new()));
    }
}
