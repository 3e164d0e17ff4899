//! Cache keys: the [`CacheKey`] trait and rendering a key struct into a template.

use serde::ser::{self, Impossible, Serialize};

use crate::error::KeyError;
use crate::template::{is_value_byte, Template, MAX_FIELDS};

/// A struct whose fields fill a template's `<field>` placeholders.
///
/// Derive it with `#[derive(CacheKey)]` next to `#[derive(Serialize)]`; the derive lists the
/// fields' serde names so that a strategy's template is checked against them when its `const`
/// is evaluated, at compile time.
///
/// # Examples
///
/// ```
/// use cacheobj::CacheKey;
/// use serde::Serialize;
///
/// #[derive(Debug, Clone, Serialize, CacheKey)]
/// struct ItemKey {
///     item_id: u64,
/// }
///
/// assert_eq!(ItemKey::FIELDS, &["item_id"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a cache key: add `#[derive(CacheKey)]` next to its `#[derive(Serialize)]`",
    label = "`{Self}` needs `#[derive(CacheKey)]`"
)]
pub trait CacheKey: Serialize {
    /// The serde names of the key's fields, in the order serde serializes them.
    const FIELDS: &'static [&'static str];
}

/// Prints the key and field as escaped text (`key: "s:1"`), not as a list of bytes.
impl std::fmt::Debug for crate::EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Text<'a>(&'a [u8]);
        impl std::fmt::Debug for Text<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "\"{}\"", self.0.escape_ascii())
            }
        }
        f.debug_struct("EntryKey")
            .field("key", &Text(&self.key))
            .field("field", &self.field.as_deref().map(Text))
            .finish()
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Written for a `None` field: `%` followed by a non-hex byte, which no escaped value contains.
const NONE_MARK: &[u8] = b"%N";

fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        if is_value_byte(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

/// Renders `prefix`, the template filled from `key`, and `suffix` into `out`.
pub(crate) fn render<K: CacheKey + ?Sized>(
    out: &mut Vec<u8>,
    prefix: &[u8],
    template: &Template,
    suffix: &[u8],
    key: &K,
) -> Result<(), KeyError> {
    out.reserve(prefix.len() + template.size_hint() + suffix.len());
    out.extend_from_slice(prefix);
    let parts = template.parts();
    if !parts.is_empty() {
        if template.in_order() {
            let mut direct = Direct {
                out: &mut *out,
                template,
                next: 0,
            };
            key.serialize(Top {
                sink: &mut direct,
                fields: K::FIELDS,
            })?;
            if direct.next != parts.len() {
                return Err(KeyError::MissingField(
                    K::FIELDS[parts[direct.next].field as usize],
                ));
            }
        } else {
            let mut scratch = Scratch {
                buf: Vec::with_capacity(32),
                ranges: [None; MAX_FIELDS],
                template,
            };
            key.serialize(Top {
                sink: &mut scratch,
                fields: K::FIELDS,
            })?;
            for part in parts {
                out.extend_from_slice(template.literal(part));
                let (start, end) = scratch.ranges[part.field as usize]
                    .ok_or(KeyError::MissingField(K::FIELDS[part.field as usize]))?;
                out.extend_from_slice(&scratch.buf[start..end]);
            }
        }
    }
    out.extend_from_slice(template.tail());
    out.extend_from_slice(suffix);
    Ok(())
}

/// Where the values of serialized fields go.
trait Sink {
    /// Serializes the field with index `index` if the template needs it.
    fn field<T: Serialize + ?Sized>(
        &mut self,
        index: usize,
        name: &'static str,
        value: &T,
    ) -> Result<(), KeyError>;
}

/// Writes values straight into the output; used when placeholders follow field order.
struct Direct<'a> {
    out: &'a mut Vec<u8>,
    template: &'a Template,
    next: usize,
}

impl Sink for Direct<'_> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        index: usize,
        name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        let parts = self.template.parts();
        match parts.get(self.next) {
            Some(part) if part.field as usize == index => {
                self.out.extend_from_slice(self.template.literal(part));
                value.serialize(ValueWriter {
                    out: self.out,
                    field: name,
                    in_option: false,
                })?;
                self.next += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Collects each needed field's value, for templates that name fields out of order.
struct Scratch<'a> {
    buf: Vec<u8>,
    ranges: [Option<(usize, usize)>; MAX_FIELDS],
    template: &'a Template,
}

impl Sink for Scratch<'_> {
    fn field<T: Serialize + ?Sized>(
        &mut self,
        index: usize,
        name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        if !self
            .template
            .parts()
            .iter()
            .any(|p| p.field as usize == index)
        {
            return Ok(());
        }
        let start = self.buf.len();
        value.serialize(ValueWriter {
            out: &mut self.buf,
            field: name,
            in_option: false,
        })?;
        self.ranges[index] = Some((start, self.buf.len()));
        Ok(())
    }
}

/// The top-level serializer: accepts a struct and hands its fields to a [`Sink`].
struct Top<'a, S> {
    sink: &'a mut S,
    fields: &'static [&'static str],
}

struct Fields<'a, S> {
    sink: &'a mut S,
    fields: &'static [&'static str],
    index: usize,
}

impl<S: Sink> ser::SerializeStruct for Fields<'_, S> {
    type Ok = ();
    type Error = KeyError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        // Serde serializes fields in declaration order, which is the order of `FIELDS`; a name
        // lookup covers hand-written impls that disagree.
        let index = match self.fields.get(self.index) {
            Some(expected) if *expected == name => Some(self.index),
            _ => self.fields.iter().position(|f| *f == name),
        };
        self.index += 1;
        match index {
            Some(index) => self.sink.field(index, name, value),
            None => Ok(()),
        }
    }

    fn skip_field(&mut self, _name: &'static str) -> Result<(), KeyError> {
        self.index += 1;
        Ok(())
    }

    fn end(self) -> Result<(), KeyError> {
        Ok(())
    }
}

macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*);)*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<Self::Ok, KeyError> {
            Err(KeyError::NotAStruct)
        }
    )*};
}

impl<'a, S: Sink> ser::Serializer for Top<'a, S> {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Impossible<(), KeyError>;
    type SerializeTuple = Impossible<(), KeyError>;
    type SerializeTupleStruct = Impossible<(), KeyError>;
    type SerializeTupleVariant = Impossible<(), KeyError>;
    type SerializeMap = Impossible<(), KeyError>;
    type SerializeStruct = Fields<'a, S>;
    type SerializeStructVariant = Impossible<(), KeyError>;

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, KeyError> {
        Ok(Fields {
            sink: self.sink,
            fields: self.fields,
            index: 0,
        })
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        value.serialize(self)
    }

    not_a_struct! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32);
        serialize_u64(u64); serialize_f32(f32); serialize_f64(f64); serialize_char(char);
        serialize_str(&str); serialize_bytes(&[u8]); serialize_none(); serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, KeyError> {
        Err(KeyError::NotAStruct)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, KeyError> {
        Err(KeyError::NotAStruct)
    }
}

/// Writes one field's value, escaped.
struct ValueWriter<'a> {
    out: &'a mut Vec<u8>,
    field: &'static str,
    /// Inside `Some(..)`: a nested option would render `Some(None)` like `None`, so it is refused.
    in_option: bool,
}

impl ValueWriter<'_> {
    fn unsupported<T>(&self, what: &'static str) -> Result<T, KeyError> {
        Err(KeyError::Unsupported {
            field: self.field,
            what,
        })
    }
}

impl ser::Serializer for ValueWriter<'_> {
    type Ok = ();
    type Error = KeyError;
    type SerializeSeq = Impossible<(), KeyError>;
    type SerializeTuple = Impossible<(), KeyError>;
    type SerializeTupleStruct = Impossible<(), KeyError>;
    type SerializeTupleVariant = Impossible<(), KeyError>;
    type SerializeMap = Impossible<(), KeyError>;
    type SerializeStruct = Impossible<(), KeyError>;
    type SerializeStructVariant = Impossible<(), KeyError>;

    fn serialize_bool(self, v: bool) -> Result<(), KeyError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), KeyError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), KeyError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), KeyError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), KeyError> {
        write_i64(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), KeyError> {
        escape_into(self.out, v.to_string().as_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), KeyError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), KeyError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), KeyError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), KeyError> {
        write_u64(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), KeyError> {
        escape_into(self.out, v.to_string().as_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), KeyError> {
        escape_into(self.out, v.to_string().as_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), KeyError> {
        escape_into(self.out, v.to_string().as_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), KeyError> {
        escape_into(self.out, v.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), KeyError> {
        escape_into(self.out, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), KeyError> {
        escape_into(self.out, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), KeyError> {
        if self.in_option {
            return self.unsupported("nested option");
        }
        self.out.extend_from_slice(NONE_MARK);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), KeyError> {
        if self.in_option {
            return self.unsupported("nested option");
        }
        value.serialize(ValueWriter {
            out: self.out,
            field: self.field,
            in_option: true,
        })
    }
    fn serialize_unit(self) -> Result<(), KeyError> {
        self.unsupported("unit")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), KeyError> {
        self.unsupported("unit struct")
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), KeyError> {
        escape_into(self.out, variant.as_bytes());
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), KeyError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), KeyError> {
        self.unsupported("enum variant with data")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, KeyError> {
        self.unsupported("sequence")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, KeyError> {
        self.unsupported("tuple")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, KeyError> {
        self.unsupported("tuple struct")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, KeyError> {
        self.unsupported("enum variant with data")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, KeyError> {
        self.unsupported("map")
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, KeyError> {
        self.unsupported("struct")
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, KeyError> {
        self.unsupported("enum variant with data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Two {
        x: String,
        y: Option<u32>,
    }
    impl CacheKey for Two {
        const FIELDS: &'static [&'static str] = &["x", "y"];
    }

    fn r(t: &'static str, k: &Two) -> String {
        let t = Template::parse(t, Two::FIELDS);
        let mut out = Vec::new();
        render(&mut out, b"p:", &t, b"", k).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_in_and_out_of_order() {
        let k = Two {
            x: "a:b".into(),
            y: Some(7),
        };
        assert_eq!(r("k:<x>:<y>", &k), "p:k:a%3Ab:7");
        assert_eq!(r("k:<y>:<x>!", &k), "p:k:7:a%3Ab!");
        assert_eq!(r("k:<x>:<x>", &k), "p:k:a%3Ab:a%3Ab");
    }

    #[test]
    fn none_differs_from_every_string() {
        let none = Two {
            x: String::new(),
            y: None,
        };
        assert_eq!(r("<y>", &none), "p:%N");
        let pct = Two {
            x: "%N".into(),
            y: None,
        };
        assert_eq!(r("<x>", &pct), "p:%25N");
    }

    #[test]
    fn entry_keys_debug_as_escaped_text() {
        let entry = crate::EntryKey {
            key: b"s:1\"\xff".to_vec(),
            field: Some(b"f\n".to_vec()),
        };
        assert_eq!(
            format!("{entry:?}"),
            r#"EntryKey { key: "s:1\"\xff", field: Some("f\n") }"#
        );
        let plain = crate::EntryKey {
            key: b"s:1".to_vec(),
            field: None,
        };
        assert_eq!(
            format!("{plain:?}"),
            r#"EntryKey { key: "s:1", field: None }"#
        );
    }

    #[test]
    fn separators_in_values_cannot_forge_keys() {
        let a = Two {
            x: "1:2".into(),
            y: Some(3),
        };
        let b = Two {
            x: "1".into(),
            y: Some(23),
        };
        assert_ne!(r("a:<x>:<y>", &a), r("a:<x>:<y>", &b));
    }
}
