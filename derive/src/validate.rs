//! Step 2: apply the rules of a cache key to the parsed model.
//!
//! A key must be a struct with named fields whose serialized names are known
//! at compile time: at least one field, every field always serialized, no two
//! fields with the same name. Every broken rule becomes one error, spanned at
//! what broke it; all of them are reported together.

use std::collections::HashMap;

use proc_macro2::Span;

use crate::parse::{ContainerAttrs, KeyInput, Shape};

/// A key that passed every rule: what `expand` needs.
pub(crate) struct KeyDef<'a> {
    /// The type's name.
    pub(crate) ident: &'a syn::Ident,
    /// The type's generics, copied as they are into the impl.
    pub(crate) generics: &'a syn::Generics,
    /// The serde names of the serialized fields, in serialization order.
    pub(crate) fields: Vec<String>,
}

const NAMED_EXAMPLE: &str = "such as `struct ItemKey { item_id: u64 }`";

fn shape_message(what: &str) -> String {
    format!(
        "cacheobj: CacheKey needs a struct with named fields, {NAMED_EXAMPLE}, \
         not {what}; templates refer to fields by name"
    )
}

const NO_FIELDS: &str = "cacheobj: CacheKey needs at least one field, such as `item_id: u64`; \
     a key without fields would give every value the same cache key";

const ALL_SKIPPED: &str = "cacheobj: CacheKey needs at least one serialized field, \
     but serde skips every field of this struct; \
     remove #[serde(skip)] or #[serde(skip_serializing)] from the fields the key is made of";

const SKIP_SERIALIZING_IF: &str = "cacheobj: `skip_serializing_if` would make the key's fields \
     vary between values; remove it, a key must always serialize every field it renders";

const FLATTEN: &str = "cacheobj: `flatten` would splice another type's fields into the key, \
     where CacheKey cannot list them; remove it and declare those fields in the key struct";

const RENAME_ALL: &str = "cacheobj: `rename_all` is not supported on a CacheKey; \
     remove it and rename each field with #[serde(rename = \"...\")] instead";

const TAG: &str = "cacheobj: `tag` makes serde write a field that the struct does not declare; \
     remove it and, if the key needs that value, declare it as a named field";

const UNTAGGED: &str = "cacheobj: `untagged` does not apply to a CacheKey struct; remove it";

const TRANSPARENT: &str =
    "cacheobj: `transparent` makes the key serialize as its one field's value, \
     without field names; remove it so templates can refer to the field by name";

const INTO: &str = "cacheobj: `into` makes the key serialize as another type, \
     whose fields CacheKey cannot see; remove it, or derive CacheKey on that other type \
     and use it as the key";

fn duplicate_message(field: &syn::Ident, name: &str, first: &syn::Ident) -> String {
    format!(
        "cacheobj: field `{field}` serializes as \"{name}\", which field `{first}` already uses; \
         give each field its own name with #[serde(rename = \"...\")]"
    )
}

/// Checks the parsed key and lists its serde field names, or returns every
/// rule it breaks as one combined error.
pub(crate) fn validate(input: KeyInput<'_>) -> syn::Result<KeyDef<'_>> {
    let mut errors = Errors::default();

    let fields = match &input.shape {
        Shape::Named(fields) => Some(fields),
        Shape::Tuple => {
            errors.push_spanned(&input.site, shape_message("a tuple struct"));
            None
        }
        Shape::Unit => {
            errors.push_spanned(&input.site, shape_message("a unit struct"));
            None
        }
        Shape::Enum => {
            errors.push_spanned(&input.site, shape_message("an enum"));
            None
        }
        Shape::Union => {
            errors.push_spanned(&input.site, shape_message("a union"));
            None
        }
    };

    check_container(&input.container, &mut errors);

    let mut names = Vec::new();
    if let Some(fields) = fields {
        let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
        for field in fields.iter().filter(|field| !field.skipped) {
            if let Some(span) = field.skip_serializing_if {
                errors.push(span, SKIP_SERIALIZING_IF);
            }
            if let Some(span) = field.flatten {
                errors.push(span, FLATTEN);
                // A flattened field contributes no name of its own.
                continue;
            }
            let name = field.serde_name();
            if let Some(first) = seen.get(&name) {
                errors.push(
                    field.name_span(),
                    duplicate_message(field.ident, &name, first),
                );
                continue;
            }
            seen.insert(name.clone(), field.ident);
            names.push(name);
        }
        if fields.is_empty() {
            errors.push_spanned(&input.site, NO_FIELDS);
        } else if fields.iter().all(|field| field.skipped) {
            errors.push(input.ident.span(), ALL_SKIPPED);
        }
    }

    errors.finish()?;
    Ok(KeyDef {
        ident: input.ident,
        generics: input.generics,
        fields: names,
    })
}

fn check_container(container: &ContainerAttrs, errors: &mut Errors) {
    let ContainerAttrs {
        rename_all,
        tag,
        untagged,
        transparent,
        into,
    } = container;
    for (span, message) in [
        (rename_all, RENAME_ALL),
        (tag, TAG),
        (untagged, UNTAGGED),
        (transparent, TRANSPARENT),
        (into, INTO),
    ] {
        if let Some(span) = span {
            errors.push(*span, message);
        }
    }
}

/// Errors collected in order, combined into one `syn::Error` at the end.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn add(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.add(syn::Error::new(span, message));
    }

    fn push_spanned(&mut self, tokens: impl quote::ToTokens, message: impl std::fmt::Display) {
        self.add(syn::Error::new_spanned(tokens, message));
    }

    fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;
    use syn::{parse_quote, DeriveInput};

    fn fields(input: DeriveInput) -> Vec<String> {
        let parsed = parse(&input).expect("parses");
        match validate(parsed) {
            Ok(key) => key.fields,
            Err(err) => panic!("unexpected error: {err}"),
        }
    }

    fn errors(input: DeriveInput) -> Vec<String> {
        let parsed = parse(&input).expect("parses");
        match validate(parsed) {
            Ok(key) => panic!("expected an error, got FIELDS {:?}", key.fields),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn lists_fields_in_declaration_order() {
        assert_eq!(
            fields(parse_quote! { struct K { item_id: u64, region: String, page: u32 } }),
            ["item_id", "region", "page"]
        );
    }

    #[test]
    fn applies_renames_skips_and_raw_identifiers() {
        let input = parse_quote! {
            #[serde(deny_unknown_fields)]
            struct K<'a, T: Clone = u8> where T: Send {
                #[serde(rename = "id")]
                item_id: u64,
                #[serde(rename(serialize = "lang", deserialize = "language"))]
                language: &'a str,
                #[serde(rename(deserialize = "ignored"))]
                page: T,
                #[serde(skip)]
                cached: u8,
                #[serde(skip_serializing, rename = "never")]
                internal: u8,
                #[serde(default, with = "m", skip_deserializing)]
                r#type: u8,
                #[serde(rename = "r#raw")]
                raw: u8,
            }
        };
        assert_eq!(fields(input), ["id", "lang", "page", "type", "r#raw"]);
    }

    #[test]
    fn ignores_rejected_attributes_on_skipped_fields() {
        let input = parse_quote! {
            struct K {
                a: u64,
                #[serde(skip, skip_serializing_if = "Option::is_none")]
                b: Option<u64>,
                #[serde(skip_serializing)]
                a2: u64,
                #[serde(skip, rename = "a")]
                c: u64,
            }
        };
        assert_eq!(fields(input), ["a"]);
    }

    #[test]
    fn rejects_a_tuple_struct() {
        assert_eq!(
            errors(parse_quote! { struct K(u64); }),
            [
                "cacheobj: CacheKey needs a struct with named fields, such as \
              `struct ItemKey { item_id: u64 }`, not a tuple struct; \
              templates refer to fields by name"
            ]
        );
    }

    #[test]
    fn rejects_a_unit_struct() {
        assert_eq!(
            errors(parse_quote! { struct K; }),
            [
                "cacheobj: CacheKey needs a struct with named fields, such as \
              `struct ItemKey { item_id: u64 }`, not a unit struct; \
              templates refer to fields by name"
            ]
        );
    }

    #[test]
    fn rejects_an_enum() {
        assert_eq!(
            errors(parse_quote! { enum K { A { id: u64 } } }),
            [
                "cacheobj: CacheKey needs a struct with named fields, such as \
              `struct ItemKey { item_id: u64 }`, not an enum; \
              templates refer to fields by name"
            ]
        );
    }

    #[test]
    fn rejects_a_union() {
        assert_eq!(
            errors(parse_quote! { union K { a: u64 } }),
            [
                "cacheobj: CacheKey needs a struct with named fields, such as \
              `struct ItemKey { item_id: u64 }`, not a union; \
              templates refer to fields by name"
            ]
        );
    }

    #[test]
    fn rejects_a_struct_without_fields() {
        assert_eq!(
            errors(parse_quote! { struct K {} }),
            [
                "cacheobj: CacheKey needs at least one field, such as `item_id: u64`; \
              a key without fields would give every value the same cache key"
            ]
        );
    }

    #[test]
    fn rejects_a_struct_whose_fields_are_all_skipped() {
        assert_eq!(
            errors(parse_quote! {
                struct K { #[serde(skip)] a: u64, #[serde(skip_serializing)] b: u64 }
            }),
            ["cacheobj: CacheKey needs at least one serialized field, \
              but serde skips every field of this struct; \
              remove #[serde(skip)] or #[serde(skip_serializing)] from the fields \
              the key is made of"]
        );
    }

    #[test]
    fn rejects_skip_serializing_if() {
        assert_eq!(
            errors(parse_quote! {
                struct K { a: u64, #[serde(skip_serializing_if = "Option::is_none")] b: Option<u64> }
            }),
            [
                "cacheobj: `skip_serializing_if` would make the key's fields vary between values; \
              remove it, a key must always serialize every field it renders"
            ]
        );
    }

    #[test]
    fn rejects_flatten() {
        assert_eq!(
            errors(parse_quote! {
                struct K { a: u64, #[serde(flatten)] rest: Other }
            }),
            [
                "cacheobj: `flatten` would splice another type's fields into the key, \
              where CacheKey cannot list them; remove it and declare those fields \
              in the key struct"
            ]
        );
    }

    #[test]
    fn rejects_rename_all_in_both_forms() {
        let expected = "cacheobj: `rename_all` is not supported on a CacheKey; remove it \
                        and rename each field with #[serde(rename = \"...\")] instead";
        assert_eq!(
            errors(parse_quote! {
                #[serde(rename_all = "camelCase")]
                struct K { item_id: u64 }
            }),
            [expected]
        );
        assert_eq!(
            errors(parse_quote! {
                #[serde(rename_all(serialize = "camelCase"))]
                struct K { item_id: u64 }
            }),
            [expected]
        );
    }

    #[test]
    fn rejects_tag_untagged_transparent_and_into() {
        assert_eq!(
            errors(parse_quote! {
                #[serde(tag = "kind")]
                struct K { a: u64 }
            }),
            [
                "cacheobj: `tag` makes serde write a field that the struct does not declare; \
              remove it and, if the key needs that value, declare it as a named field"
            ]
        );
        assert_eq!(
            errors(parse_quote! {
                #[serde(untagged)]
                struct K { a: u64 }
            }),
            ["cacheobj: `untagged` does not apply to a CacheKey struct; remove it"]
        );
        assert_eq!(
            errors(parse_quote! {
                #[serde(transparent)]
                struct K { a: u64 }
            }),
            [
                "cacheobj: `transparent` makes the key serialize as its one field's value, \
              without field names; remove it so templates can refer to the field by name"
            ]
        );
        assert_eq!(
            errors(parse_quote! {
                #[serde(into = "Other")]
                struct K { a: u64 }
            }),
            [
                "cacheobj: `into` makes the key serialize as another type, whose fields \
              CacheKey cannot see; remove it, or derive CacheKey on that other type \
              and use it as the key"
            ]
        );
    }

    #[test]
    fn rejects_duplicate_names_after_renaming() {
        assert_eq!(
            errors(parse_quote! {
                struct K { id: u64, #[serde(rename = "id")] item_id: u64 }
            }),
            [
                "cacheobj: field `item_id` serializes as \"id\", which field `id` already uses; \
              give each field its own name with #[serde(rename = \"...\")]"
            ]
        );
        assert_eq!(
            errors(parse_quote! {
                struct K { r#type: u64, #[serde(rename(serialize = "type"))] kind: u64 }
            }),
            ["cacheobj: field `kind` serializes as \"type\", which field `r#type` already uses; \
              give each field its own name with #[serde(rename = \"...\")]"]
        );
    }

    #[test]
    fn reports_every_broken_rule_in_order() {
        let messages = errors(parse_quote! {
            #[serde(rename_all = "camelCase", transparent)]
            struct K {
                a: u64,
                #[serde(flatten)]
                b: Other,
                #[serde(rename = "a", skip_serializing_if = "f")]
                c: u64,
            }
        });
        let starts: Vec<_> = messages
            .iter()
            .map(|m| m.split(';').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            starts,
            [
                "cacheobj: `rename_all` is not supported on a CacheKey",
                "cacheobj: `transparent` makes the key serialize as its one field's value, \
                 without field names",
                "cacheobj: `flatten` would splice another type's fields into the key, \
                 where CacheKey cannot list them",
                "cacheobj: `skip_serializing_if` would make the key's fields vary between values",
                "cacheobj: field `c` serializes as \"a\", which field `a` already uses",
            ]
        );
    }

    #[test]
    fn every_message_starts_lowercase_and_says_what_to_do() {
        let all = [
            shape_message("an enum"),
            NO_FIELDS.to_owned(),
            ALL_SKIPPED.to_owned(),
            SKIP_SERIALIZING_IF.to_owned(),
            FLATTEN.to_owned(),
            RENAME_ALL.to_owned(),
            TAG.to_owned(),
            UNTAGGED.to_owned(),
            TRANSPARENT.to_owned(),
            INTO.to_owned(),
            duplicate_message(&parse_quote!(b), "a", &parse_quote!(a)),
        ];
        for message in all {
            assert!(message.starts_with("cacheobj: "), "{message}");
            assert!(!message.contains("  "), "{message}");
            assert!(message.contains(';'), "{message}");
        }
    }
}
