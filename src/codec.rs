//! How values become bytes: the strategy's [`Codec`] for structured values, and plain text for
//! counters and for integer and string elements of lists and sets.

use serde::de::{self, DeserializeOwned, Visitor};
use serde::ser::{self, Impossible, Serialize};

use crate::error::CodecError;
use crate::nesting_limit::{self, Limited, MAX_DEPTH};
use postcard::de_flavors::Slice;

/// The binary encoding of obj and hash values, and of list and set elements that are not
/// integers, floats, booleans or strings. Chosen per strategy with
/// [`Strategy::codec`](crate::Strategy::codec), never at the call site.
///
/// Both decoders refuse values nested more than 128 levels deep (a miss), whatever wrote them:
/// deeper ones, of recursive value types, could overflow the stack.
///
/// # Examples
///
/// ```
/// use cacheobj::{CacheKey, Codec, Strategy};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Item { id: u64 }
/// #[derive(Serialize, CacheKey)]
/// struct ItemKey { item_id: u64 }
///
/// const COMPACT: Strategy<Item, ItemKey> =
///     Strategy::<Item, ItemKey>::obj("item:<item_id>").codec(Codec::Postcard);
/// assert_eq!(COMPACT.value_codec(), Codec::Postcard);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack with struct fields by name (rmp-serde's `to_vec_named`), readable by any
    /// MessagePack decoder. The default.
    #[default]
    MessagePack,
    /// postcard: compact, positional, Rust-only. Smaller and faster; changing a struct's fields
    /// needs a [`Strategy::version`](crate::Strategy::version) bump.
    Postcard,
}

impl Codec {
    pub(crate) fn encode<V: Serialize + ?Sized>(self, value: &V) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::MessagePack => {
                rmp_serde::to_vec_named(value).map_err(CodecError::MessagePackEncode)
            }
            Codec::Postcard => postcard::to_stdvec(value).map_err(CodecError::Postcard),
        }
    }

    pub(crate) fn decode<V: DeserializeOwned>(self, bytes: &[u8]) -> Result<V, CodecError> {
        match self {
            Codec::MessagePack => msgpack_limited(bytes, |de| V::deserialize(de)),
            Codec::Postcard => postcard_limited(bytes, |de| V::deserialize(de)),
        }
    }
}

/// Decodes postcard `bytes` with `f`, nesting limited to [`MAX_DEPTH`] levels: postcard has no
/// limit of its own, and a hostile value of a recursive type would overflow the stack.
fn postcard_limited<'de, R>(
    bytes: &'de [u8],
    f: impl FnOnce(
        Limited<'_, &mut postcard::Deserializer<'de, Slice<'de>>>,
    ) -> Result<R, postcard::Error>,
) -> Result<R, CodecError> {
    let mut de = postcard::Deserializer::from_bytes(bytes);
    nesting_limit::with_limit(&mut de, f).map_err(|e| match e {
        nesting_limit::Error::TooDeep => CodecError::TooDeep,
        nesting_limit::Error::Inner(e) => CodecError::Postcard(e),
    })
}

/// rmp-serde's deserializer over a byte slice.
type MsgpackReader<'de> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'de, [u8]>>;

/// Decodes MessagePack `bytes` with `f`, once their declared lengths are checked, nesting
/// limited to [`MAX_DEPTH`] levels (rmp-serde's default, 1024, overflows a 2 MiB thread stack in
/// unoptimized builds). rmp-serde's own limit, set to the same, counts only arrays, maps and
/// extensions; the wrapper also counts enums, which nest without them (`{"Next": {"Next": ...}}`).
fn msgpack_limited<'de, R>(
    bytes: &'de [u8],
    f: impl FnOnce(Limited<'_, &mut MsgpackReader<'de>>) -> Result<R, rmp_serde::decode::Error>,
) -> Result<R, CodecError> {
    check_msgpack_lengths(bytes)?;
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    nesting_limit::with_limit(&mut de, f).map_err(|e| match e {
        nesting_limit::Error::TooDeep => CodecError::TooDeep,
        nesting_limit::Error::Inner(e) => CodecError::MessagePackDecode(e),
    })
}

/// Checks, without recursion, that every length a MessagePack value declares fits in the bytes
/// that follow it, so decoding never preallocates more than the reply could hold (serde sizes
/// collections from declared lengths).
fn check_msgpack_lengths(bytes: &[u8]) -> Result<(), CodecError> {
    let bad = || CodecError::Text("MessagePack value (a declared length exceeds the data)");
    let mut at = 0usize;
    let mut pending: u64 = 1; // values still to read
    let be = |at: usize, n: usize| -> Result<u64, CodecError> {
        let b = bytes.get(at..at + n).ok_or_else(bad)?;
        Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    while pending > 0 {
        let marker = *bytes.get(at).ok_or_else(bad)?;
        at += 1;
        pending -= 1;
        // (bytes to skip, values it contains)
        let (skip, children): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (be(at, 1)?, 0).then_skip(&mut at, 1),
            0xc5 | 0xda => (be(at, 2)?, 0).then_skip(&mut at, 2),
            0xc6 | 0xdb => (be(at, 4)?, 0).then_skip(&mut at, 4),
            0xc7 => (be(at, 1)? + 1, 0).then_skip(&mut at, 1),
            0xc8 => (be(at, 2)? + 1, 0).then_skip(&mut at, 2),
            0xc9 => (be(at, 4)? + 1, 0).then_skip(&mut at, 4),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, be(at, 2)?).then_skip(&mut at, 2),
            0xdd => (0, be(at, 4)?).then_skip(&mut at, 4),
            0xde => (0, 2 * be(at, 2)?).then_skip(&mut at, 2),
            0xdf => (0, 2 * be(at, 4)?).then_skip(&mut at, 4),
            0xc1 => return Err(bad()),
        };
        let remaining = (bytes.len() - at) as u64;
        // Every value takes at least one byte.
        if skip > remaining || pending + children > remaining - skip {
            return Err(bad());
        }
        at += skip as usize;
        pending += children;
    }
    Ok(())
}

/// Advances past a length field after reading it.
trait ThenSkip {
    fn then_skip(self, at: &mut usize, n: usize) -> Self;
}

impl ThenSkip for (u64, u64) {
    fn then_skip(self, at: &mut usize, n: usize) -> Self {
        *at += n;
        self
    }
}

/// Encodes a counter value or a collection element: integers, floats, booleans, chars and
/// strings as plain text (as Flask-CacheOBJ stores them), anything else with `codec`.
pub(crate) fn encode_text<V: Serialize + ?Sized>(
    codec: Codec,
    value: &V,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    match value.serialize(TextWriter { out: &mut out }) {
        Ok(()) => Ok(out),
        Err(TextError::NotText) => codec.encode(value),
        Err(TextError::Codec(e)) => Err(e),
    }
}

/// Decodes what [`encode_text`] wrote.
pub(crate) fn decode_text<V: DeserializeOwned>(
    codec: Codec,
    bytes: &[u8],
) -> Result<V, CodecError> {
    V::deserialize(TextReader { bytes, codec })
}

#[derive(Debug)]
enum TextError {
    NotText,
    Codec(CodecError),
}

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextError::NotText => f.write_str("not a plain-text value"),
            TextError::Codec(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TextError {}

impl ser::Error for TextError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        TextError::Codec(CodecError::Custom(msg.to_string()))
    }
}

struct TextWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl TextWriter<'_> {
    fn text(self, s: impl std::fmt::Display) -> Result<(), TextError> {
        use std::io::Write;
        write!(self.out, "{s}").map_err(|e| TextError::Codec(CodecError::Custom(e.to_string())))
    }
}

macro_rules! text_methods {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method(self, v: $ty) -> Result<(), TextError> {
            self.text(v)
        }
    )*};
}

impl ser::Serializer for TextWriter<'_> {
    type Ok = ();
    type Error = TextError;
    type SerializeSeq = Impossible<(), TextError>;
    type SerializeTuple = Impossible<(), TextError>;
    type SerializeTupleStruct = Impossible<(), TextError>;
    type SerializeTupleVariant = Impossible<(), TextError>;
    type SerializeMap = Impossible<(), TextError>;
    type SerializeStruct = Impossible<(), TextError>;
    type SerializeStructVariant = Impossible<(), TextError>;

    text_methods! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str);
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), TextError> {
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), TextError> {
        value.serialize(self)
    }
    fn serialize_none(self) -> Result<(), TextError> {
        Err(TextError::NotText)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), TextError> {
        Err(TextError::NotText)
    }
    fn serialize_unit(self) -> Result<(), TextError> {
        Err(TextError::NotText)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), TextError> {
        Err(TextError::NotText)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), TextError> {
        Err(TextError::NotText)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), TextError> {
        Err(TextError::NotText)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, TextError> {
        Err(TextError::NotText)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, TextError> {
        Err(TextError::NotText)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, TextError> {
        Err(TextError::NotText)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, TextError> {
        Err(TextError::NotText)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, TextError> {
        Err(TextError::NotText)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, TextError> {
        Err(TextError::NotText)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, TextError> {
        Err(TextError::NotText)
    }
}

/// Reads plain text for the primitive types [`TextWriter`] writes, and hands everything else to
/// the codec. Which one applies follows from the requested type, as on the writing side.
struct TextReader<'a> {
    bytes: &'a [u8],
    codec: Codec,
}

impl<'a> TextReader<'a> {
    fn str(&self, what: &'static str) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes).map_err(|_| CodecError::Text(what))
    }

    fn parse<T: std::str::FromStr>(&self, what: &'static str) -> Result<T, CodecError> {
        self.str(what)?.parse().map_err(|_| CodecError::Text(what))
    }
}

macro_rules! parse_methods {
    ($($method:ident => $visit:ident($ty:ty, $what:literal);)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
            visitor.$visit(self.parse::<$ty>($what)?)
        }
    )*};
}

macro_rules! codec_methods {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, CodecError> {
            match self.codec {
                Codec::MessagePack => msgpack_limited(self.bytes, |de| {
                    de::Deserializer::$method(de, $($arg,)* visitor)
                }),
                Codec::Postcard => postcard_limited(self.bytes, |de| {
                    de::Deserializer::$method(de, $($arg,)* visitor)
                }),
            }
        }
    )*};
}

impl<'de, 'a: 'de> de::Deserializer<'de> for TextReader<'a> {
    type Error = CodecError;

    parse_methods! {
        deserialize_bool => visit_bool(bool, "boolean");
        deserialize_i8 => visit_i8(i8, "integer");
        deserialize_i16 => visit_i16(i16, "integer");
        deserialize_i32 => visit_i32(i32, "integer");
        deserialize_i64 => visit_i64(i64, "integer");
        deserialize_i128 => visit_i128(i128, "integer");
        deserialize_u8 => visit_u8(u8, "integer");
        deserialize_u16 => visit_u16(u16, "integer");
        deserialize_u32 => visit_u32(u32, "integer");
        deserialize_u64 => visit_u64(u64, "integer");
        deserialize_u128 => visit_u128(u128, "integer");
        deserialize_f32 => visit_f32(f32, "float");
        deserialize_f64 => visit_f64(f64, "float");
        deserialize_char => visit_char(char, "char");
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        visitor.visit_borrowed_str(self.str("UTF-8 string")?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        visitor.visit_borrowed_bytes(self.bytes)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, CodecError> {
        self.deserialize_bytes(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, CodecError> {
        visitor.visit_newtype_struct(self)
    }

    codec_methods! {
        deserialize_any();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nesting_limit::tests::on_2mib_stack;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Member {
        id: u64,
        role: String,
    }

    #[test]
    fn integers_and_strings_are_plain_text() {
        assert_eq!(encode_text(Codec::MessagePack, &42u64).unwrap(), b"42");
        assert_eq!(encode_text(Codec::MessagePack, &-7i64).unwrap(), b"-7");
        assert_eq!(encode_text(Codec::MessagePack, "tag").unwrap(), b"tag");
        assert_eq!(decode_text::<i64>(Codec::MessagePack, b"-7").unwrap(), -7);
        assert_eq!(
            decode_text::<String>(Codec::MessagePack, b"tag").unwrap(),
            "tag"
        );
    }

    #[test]
    fn structs_fall_back_to_the_codec() {
        for codec in [Codec::MessagePack, Codec::Postcard] {
            let m = Member {
                id: 3,
                role: "admin".into(),
            };
            let bytes = encode_text(codec, &m).unwrap();
            assert_eq!(bytes, codec.encode(&m).unwrap());
            assert_eq!(decode_text::<Member>(codec, &bytes).unwrap(), m);
        }
    }

    #[test]
    fn declared_lengths_must_fit_the_data() {
        let item = Member {
            id: 3,
            role: "admin".into(),
        };
        let ok = Codec::MessagePack.encode(&item).unwrap();
        assert!(check_msgpack_lengths(&ok).is_ok());
        assert!(check_msgpack_lengths(&ok[..ok.len() - 1]).is_err());
        for bad in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02][..],
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0xdf, 0x00, 0x00, 0x00, 0x02, 0x01],
            &[0xc1],
            &[],
        ] {
            assert!(check_msgpack_lengths(bad).is_err(), "{bad:?}");
        }
    }

    /// A recursive type: each `Node` level is an enum and a sequence (two levels of nesting).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Tree {
        Leaf,
        Node(Vec<Tree>),
    }

    /// A linked list: each level is a struct and an option (two levels of nesting).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Link {
        next: Option<Box<Link>>,
    }

    /// `nodes` nested one-child `Node`s around a `Leaf`, in postcard, built without building the
    /// value (dropping a deep one would overflow the stack): variant 1 and length 1 per node.
    fn tree_bytes(nodes: usize) -> Vec<u8> {
        let mut bytes = [1u8, 1].repeat(nodes);
        bytes.push(0);
        bytes
    }

    /// `links` nested `Some`s and a `None`, in postcard.
    fn link_bytes(links: usize) -> Vec<u8> {
        let mut bytes = vec![1u8; links];
        bytes.push(0);
        bytes
    }

    fn assert_too_deep<V: DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
        let err = Codec::Postcard.decode::<V>(bytes).unwrap_err();
        assert!(matches!(err, CodecError::TooDeep), "{err:?}");
        let err = decode_text::<V>(Codec::Postcard, bytes).unwrap_err();
        assert!(matches!(err, CodecError::TooDeep), "{err:?}");
    }

    #[test]
    fn postcard_recursive_values_below_the_limit_round_trip() {
        on_2mib_stack(|| {
            // 63 nodes and the leaf: 127 levels, the deepest Tree under the limit.
            let mut tree = Tree::Leaf;
            let mut list = Link { next: None };
            for _ in 0..63 {
                tree = Tree::Node(vec![tree]);
                list = Link {
                    next: Some(Box::new(list)),
                };
            }
            let bytes = Codec::Postcard.encode(&tree).unwrap();
            assert_eq!(bytes, tree_bytes(63));
            assert_eq!(Codec::Postcard.decode::<Tree>(&bytes).unwrap(), tree);
            assert_eq!(decode_text::<Tree>(Codec::Postcard, &bytes).unwrap(), tree);
            let bytes = Codec::Postcard.encode(&list).unwrap();
            assert_eq!(bytes, link_bytes(63));
            assert_eq!(Codec::Postcard.decode::<Link>(&bytes).unwrap(), list);
            assert_eq!(decode_text::<Link>(Codec::Postcard, &bytes).unwrap(), list);
        });
    }

    #[test]
    fn postcard_values_just_above_the_limit_are_too_deep() {
        on_2mib_stack(|| {
            // 64 nodes and the leaf: 129 levels.
            assert_too_deep::<Tree>(&tree_bytes(64));
            // 64 links and the last: 129 levels.
            assert_too_deep::<Link>(&link_bytes(64));
        });
    }

    #[test]
    fn postcard_recursion_bombs_are_errors_not_stack_overflows() {
        on_2mib_stack(|| {
            assert_too_deep::<Tree>(&tree_bytes(100_000));
            assert_too_deep::<Link>(&link_bytes(100_000));
        });
        assert_eq!(
            CodecError::TooDeep.to_string(),
            "value nests deeper than 128 levels"
        );
    }

    /// A recursive enum: each level is one enum, which rmp-serde's own depth limit does not
    /// count.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Chain {
        End,
        Next(Box<Chain>),
    }

    /// `links` nested `Next`s around an `End`, in MessagePack as `to_vec_named` writes them
    /// (`{"Next": {"Next": ... "End"}}`), built without building the value.
    fn chain_msgpack(links: usize) -> Vec<u8> {
        let mut bytes = b"\x81\xa4Next".repeat(links);
        bytes.extend_from_slice(b"\xa3End");
        bytes
    }

    #[test]
    fn messagepack_enums_count_toward_the_limit() {
        on_2mib_stack(|| {
            // 127 links and the end: 128 levels.
            let mut chain = Chain::End;
            for _ in 0..127 {
                chain = Chain::Next(Box::new(chain));
            }
            let bytes = Codec::MessagePack.encode(&chain).unwrap();
            assert_eq!(bytes, chain_msgpack(127));
            assert_eq!(Codec::MessagePack.decode::<Chain>(&bytes).unwrap(), chain);
            assert_eq!(
                decode_text::<Chain>(Codec::MessagePack, &bytes).unwrap(),
                chain
            );
            for links in [128, 100_000] {
                let bytes = chain_msgpack(links);
                let err = Codec::MessagePack.decode::<Chain>(&bytes).unwrap_err();
                assert!(matches!(err, CodecError::TooDeep), "{links}: {err:?}");
                let err = decode_text::<Chain>(Codec::MessagePack, &bytes).unwrap_err();
                assert!(matches!(err, CodecError::TooDeep), "{links}: {err:?}");
            }
        });
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_text::<u64>(Codec::MessagePack, b"12x").is_err());
        assert!(decode_text::<String>(Codec::MessagePack, &[0xff, 0xfe]).is_err());
        assert!(
            decode_text::<Member>(Codec::MessagePack, &[0xdb, 0xff, 0xff, 0xff, 0xff]).is_err()
        );
        assert!(Codec::Postcard.decode::<Member>(&[0xff; 3]).is_err());
    }
}
