//! Key templates: parsed and checked in const evaluation, rendered without parsing.
//!
//! A template is literal text with `<field>` placeholders. Rendering escapes every value so that
//! it only holds bytes from `[A-Za-z0-9_.-]` and `%XX` escapes, and the parser demands a
//! *separator* (a byte outside that alphabet and not `%`, such as `:`) between two placeholders.
//! Together these make rendering injective: the end of each value is found by scanning for the
//! separator that follows it, so two different keys never render alike.

/// The most placeholders one template may hold.
pub(crate) const MAX_PLACEHOLDERS: usize = 8;
/// Key types may have at most this many serialized fields.
pub(crate) const MAX_FIELDS: usize = 64;

/// One placeholder: the literal text before it and the key field it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Part {
    pub(crate) lit_start: u16,
    pub(crate) lit_end: u16,
    pub(crate) field: u8,
}

impl Part {
    const EMPTY: Part = Part {
        lit_start: 0,
        lit_end: 0,
        field: 0,
    };
}

/// A parsed template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Template {
    source: &'static str,
    parts: [Part; MAX_PLACEHOLDERS],
    len: u8,
    tail_start: u16,
    /// Whether placeholders name fields in strictly increasing serialization order, so values
    /// can be written straight into the output as they are serialized.
    in_order: bool,
}

/// Whether `b` may appear in a rendered value unescaped.
pub(crate) const fn is_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'
}

const fn is_separator(b: u8) -> bool {
    !is_value_byte(b) && b != b'%'
}

const fn has_separator(bytes: &[u8], start: usize, end: usize) -> bool {
    let mut i = start;
    while i < end {
        if is_separator(bytes[i]) {
            return true;
        }
        i += 1;
    }
    false
}

const fn same(a: &[u8], a_start: usize, a_end: usize, b: &[u8]) -> bool {
    if a_end - a_start != b.len() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if a[a_start + i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Template {
    /// Parses `source` against the key's field names.
    ///
    /// # Panics
    ///
    /// Panics when the template is invalid. Strategies are consts, so this panic is a compile
    /// error that names the problem.
    pub(crate) const fn parse(source: &'static str, fields: &'static [&'static str]) -> Template {
        let b = source.as_bytes();
        if b.len() > u16::MAX as usize {
            panic!("cacheobj: the template is longer than 65535 bytes");
        }
        if fields.len() > MAX_FIELDS {
            panic!("cacheobj: key types may have at most 64 fields");
        }
        let mut parts = [Part::EMPTY; MAX_PLACEHOLDERS];
        let mut n = 0;
        let mut in_order = true;
        let mut i = 0;
        let mut lit_start = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'<' {
                let name_start = i + 1;
                let mut j = name_start;
                while j < b.len() && b[j] != b'>' {
                    if b[j] == b'<' {
                        panic!("cacheobj: unclosed placeholder: a `<` in the template has no matching `>` before the next `<`");
                    }
                    j += 1;
                }
                if j == b.len() {
                    panic!(
                        "cacheobj: unclosed placeholder: a `<` in the template has no matching `>`"
                    );
                }
                if j == name_start {
                    panic!("cacheobj: empty placeholder `<>`: name a field of the key, as in `item:<item_id>`");
                }
                if n > 0 && !has_separator(b, lit_start, i) {
                    panic!("cacheobj: the text between two placeholders must hold a separator, a character other than letters, digits, `_`, `.`, `-` and `%`: put one such as `:` between them, as in `<a>:<b>`");
                }
                if n == MAX_PLACEHOLDERS {
                    panic!("cacheobj: a template may hold at most 8 placeholders");
                }
                let mut f = 0;
                let mut found = false;
                while f < fields.len() {
                    if same(b, name_start, j, fields[f].as_bytes()) {
                        found = true;
                        break;
                    }
                    f += 1;
                }
                if !found {
                    panic!("cacheobj: the template names a field that the key type does not have: check the spelling of each `<field>` against the key struct");
                }
                if n > 0 && parts[n - 1].field as usize >= f {
                    in_order = false;
                }
                parts[n] = Part {
                    lit_start: lit_start as u16,
                    lit_end: i as u16,
                    field: f as u8,
                };
                n += 1;
                i = j + 1;
                lit_start = i;
            } else if c == b'>' {
                panic!("cacheobj: a `>` in the template has no opening `<`");
            } else if c <= b' ' || c == 0x7f {
                panic!("cacheobj: templates may not contain spaces or control characters");
            } else {
                i += 1;
            }
        }
        Template {
            source,
            parts,
            len: n as u8,
            tail_start: lit_start as u16,
            in_order,
        }
    }

    /// The template as written.
    pub(crate) const fn source(&self) -> &'static str {
        self.source
    }

    pub(crate) fn parts(&self) -> &[Part] {
        &self.parts[..self.len as usize]
    }

    pub(crate) fn literal(&self, part: &Part) -> &'static [u8] {
        &self.source.as_bytes()[part.lit_start as usize..part.lit_end as usize]
    }

    pub(crate) fn tail(&self) -> &'static [u8] {
        &self.source.as_bytes()[self.tail_start as usize..]
    }

    pub(crate) fn in_order(&self) -> bool {
        self.in_order
    }

    /// An upper estimate of the rendered length, for preallocating the buffer.
    pub(crate) fn size_hint(&self) -> usize {
        self.source.len() + 16 * self.len as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[&str] = &["a", "b", "user_id"];

    #[test]
    fn parses_literals_and_placeholders() {
        let t = Template::parse("x:<b>:{<user_id>}:y", FIELDS);
        let parts = t.parts();
        assert_eq!(parts.len(), 2);
        assert_eq!(t.literal(&parts[0]), b"x:");
        assert_eq!(parts[0].field, 1);
        assert_eq!(t.literal(&parts[1]), b":{");
        assert_eq!(parts[1].field, 2);
        assert_eq!(t.tail(), b"}:y");
        assert!(t.in_order());
        assert!(!Template::parse("<b>:<a>", FIELDS).in_order());
    }

    #[test]
    fn template_without_placeholders_is_all_tail() {
        let t = Template::parse("items", FIELDS);
        assert!(t.parts().is_empty());
        assert_eq!(t.tail(), b"items");
    }

    #[test]
    #[should_panic(expected = "must hold a separator")]
    fn rejects_placeholders_without_separator() {
        Template::parse("<a>x<b>", FIELDS);
    }

    #[test]
    #[should_panic(expected = "does not have")]
    fn rejects_unknown_field() {
        Template::parse("<c>", FIELDS);
    }

    #[test]
    #[should_panic(expected = "unclosed")]
    fn rejects_unclosed() {
        Template::parse("a:<b", FIELDS);
    }

    #[test]
    #[should_panic(expected = "empty placeholder")]
    fn rejects_empty() {
        Template::parse("a:<>", FIELDS);
    }
}
