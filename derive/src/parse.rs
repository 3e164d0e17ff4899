//! Step 1: read a `DeriveInput` into a plain model of what serde will do.
//!
//! Parsing records facts (the item's shape, each field's serde name, which
//! serde attributes are present and where) and judges nothing: the rules live
//! in `validate`. It fails only when a `#[serde(...)]` attribute that matters
//! here cannot be read, such as `rename = 5`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr, Token};

/// The derive input, as far as `CacheKey` cares.
pub(crate) struct KeyInput<'a> {
    /// The type's name.
    pub(crate) ident: &'a syn::Ident,
    /// The type's generics, where clause included.
    pub(crate) generics: &'a syn::Generics,
    /// What kind of item it is, with its fields if it has named ones.
    pub(crate) shape: Shape<'a>,
    /// The tokens an error about the item's shape should point at: the
    /// `enum`/`union`/`struct` keyword and name, or the field list.
    pub(crate) site: TokenStream,
    /// Container-level serde attributes that change the serialized fields.
    pub(crate) container: ContainerAttrs,
}

/// The kind of item the derive was put on.
pub(crate) enum Shape<'a> {
    /// `struct K { .. }`, possibly with no fields.
    Named(Vec<KeyField<'a>>),
    /// `struct K(..);`
    Tuple,
    /// `struct K;`
    Unit,
    /// `enum K { .. }`
    Enum,
    /// `union K { .. }`
    Union,
}

/// Where a shape error should point: the tokens of the offending item head.
fn shape_site(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Unnamed(fields) => fields.to_token_stream(),
            Fields::Named(fields) => fields.to_token_stream(),
            Fields::Unit => {
                let token = data.struct_token;
                quote!(#token #ident)
            }
        },
        Data::Enum(data) => {
            let token = data.enum_token;
            quote!(#token #ident)
        }
        Data::Union(data) => {
            let token = data.union_token;
            quote!(#token #ident)
        }
    }
}

/// Container-level serde attributes that `validate` rejects, with the span of
/// each attribute's name.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    /// `#[serde(rename_all = "..")]` in any form.
    pub(crate) rename_all: Option<Span>,
    /// `#[serde(tag = "..")]`.
    pub(crate) tag: Option<Span>,
    /// `#[serde(untagged)]`.
    pub(crate) untagged: Option<Span>,
    /// `#[serde(transparent)]`.
    pub(crate) transparent: Option<Span>,
    /// `#[serde(into = "..")]`.
    pub(crate) into: Option<Span>,
}

/// One named field and the serde attributes that bear on its name.
pub(crate) struct KeyField<'a> {
    /// The field's Rust name.
    pub(crate) ident: &'a syn::Ident,
    /// The serialize-side rename, if any (`rename = ".."` or
    /// `rename(serialize = "..")`).
    pub(crate) rename: Option<LitStr>,
    /// `skip` or `skip_serializing`: serde never writes the field.
    pub(crate) skipped: bool,
    /// Span of a `skip_serializing_if` attribute.
    pub(crate) skip_serializing_if: Option<Span>,
    /// Span of a `flatten` attribute.
    pub(crate) flatten: Option<Span>,
}

impl KeyField<'_> {
    /// The name serde writes for this field.
    pub(crate) fn serde_name(&self) -> String {
        match &self.rename {
            Some(lit) => lit.value(),
            None => self.ident.unraw().to_string(),
        }
    }

    /// Where an error about the field's name should point: the rename if
    /// there is one, the field otherwise.
    pub(crate) fn name_span(&self) -> Span {
        match &self.rename {
            Some(lit) => lit.span(),
            None => self.ident.span(),
        }
    }
}

/// Reads the derive input. Fails only on unreadable serde attributes.
pub(crate) fn parse(input: &DeriveInput) -> syn::Result<KeyInput<'_>> {
    let container = parse_container(&input.attrs)?;
    let shape = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => Shape::Named(
                fields
                    .named
                    .iter()
                    .map(parse_field)
                    .collect::<syn::Result<_>>()?,
            ),
            Fields::Unnamed(_) => Shape::Tuple,
            Fields::Unit => Shape::Unit,
        },
        Data::Enum(_) => Shape::Enum,
        Data::Union(_) => Shape::Union,
    };
    Ok(KeyInput {
        ident: &input.ident,
        generics: &input.generics,
        shape,
        site: shape_site(input),
        container,
    })
}

fn parse_container(attrs: &[syn::Attribute]) -> syn::Result<ContainerAttrs> {
    let mut out = ContainerAttrs::default();
    for_each_serde_meta(attrs, |meta| {
        let slot = if meta.path.is_ident("rename_all") {
            &mut out.rename_all
        } else if meta.path.is_ident("tag") {
            &mut out.tag
        } else if meta.path.is_ident("untagged") {
            &mut out.untagged
        } else if meta.path.is_ident("transparent") {
            &mut out.transparent
        } else if meta.path.is_ident("into") {
            &mut out.into
        } else {
            return skip_value(meta);
        };
        slot.get_or_insert(meta.path.span());
        skip_value(meta)
    })?;
    Ok(out)
}

fn parse_field(field: &syn::Field) -> syn::Result<KeyField<'_>> {
    let ident = field
        .ident
        .as_ref()
        .expect("fields of a struct with named fields have names");
    let mut out = KeyField {
        ident,
        rename: None,
        skipped: false,
        skip_serializing_if: None,
        flatten: None,
    };
    for_each_serde_meta(&field.attrs, |meta| {
        if meta.path.is_ident("rename") {
            if meta.input.peek(Token![=]) {
                out.rename = Some(meta.value()?.parse()?);
            } else {
                meta.parse_nested_meta(|inner| {
                    if inner.path.is_ident("serialize") {
                        out.rename = Some(inner.value()?.parse()?);
                        Ok(())
                    } else {
                        skip_value(&inner)
                    }
                })?;
            }
            Ok(())
        } else if meta.path.is_ident("skip") || meta.path.is_ident("skip_serializing") {
            out.skipped = true;
            skip_value(meta)
        } else if meta.path.is_ident("skip_serializing_if") {
            out.skip_serializing_if.get_or_insert(meta.path.span());
            skip_value(meta)
        } else if meta.path.is_ident("flatten") {
            out.flatten.get_or_insert(meta.path.span());
            skip_value(meta)
        } else {
            skip_value(meta)
        }
    })?;
    Ok(out)
}

/// Calls `handle` on each item of every `#[serde(...)]` attribute.
fn for_each_serde_meta(
    attrs: &[syn::Attribute],
    mut handle: impl FnMut(&ParseNestedMeta<'_>) -> syn::Result<()>,
) -> syn::Result<()> {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        attr.parse_nested_meta(|meta| handle(&meta))?;
    }
    Ok(())
}

/// Consumes whatever follows an item's name (`= value`, `(...)` or nothing)
/// up to the next comma, so that attributes this crate ignores can take any
/// form serde accepts.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    while !meta.input.is_empty() && !meta.input.peek(Token![,]) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn named<'a>(parsed: &'a KeyInput<'a>) -> &'a [KeyField<'a>] {
        match &parsed.shape {
            Shape::Named(fields) => fields,
            _ => panic!("expected a struct with named fields"),
        }
    }

    #[test]
    fn reads_field_names_renames_and_skips() {
        let input: DeriveInput = parse_quote! {
            struct K {
                a: u64,
                #[serde(rename = "bee")]
                b: u64,
                #[serde(rename(serialize = "sea", deserialize = "c_in"))]
                c: u64,
                #[serde(rename(deserialize = "d_in"))]
                d: u64,
                #[serde(skip)]
                e: u64,
                #[serde(skip_serializing)]
                f: u64,
                #[serde(skip_deserializing)]
                g: u64,
                r#type: u64,
            }
        };
        let parsed = parse(&input).unwrap();
        let fields = named(&parsed);
        let names: Vec<_> = fields.iter().map(KeyField::serde_name).collect();
        assert_eq!(names, ["a", "bee", "sea", "d", "e", "f", "g", "type"]);
        let skipped: Vec<_> = fields.iter().map(|f| f.skipped).collect();
        assert_eq!(
            skipped,
            [false, false, false, false, true, true, false, false]
        );
    }

    #[test]
    fn ignores_other_serde_attributes_of_any_form() {
        let input: DeriveInput = parse_quote! {
            #[serde(deny_unknown_fields, rename = "Other", bound(serialize = "T: Serialize"))]
            #[serde(crate = "::serde", default)]
            #[doc = "not serde"]
            struct K<T> {
                #[serde(default, with = "my_mod", alias = "x", bound = "T: Clone")]
                #[serde(serialize_with = "path::to::f", borrow, getter = "K::get")]
                a: T,
            }
        };
        let parsed = parse(&input).unwrap();
        let container = &parsed.container;
        assert!(container.rename_all.is_none());
        assert!(container.tag.is_none());
        assert!(container.untagged.is_none());
        assert!(container.transparent.is_none());
        assert!(container.into.is_none());
        let field = &named(&parsed)[0];
        assert_eq!(field.serde_name(), "a");
        assert!(!field.skipped);
        assert!(field.flatten.is_none());
        assert!(field.skip_serializing_if.is_none());
    }

    #[test]
    fn records_rejected_attributes() {
        let input: DeriveInput = parse_quote! {
            #[serde(rename_all(serialize = "camelCase"), tag = "t")]
            #[serde(untagged, transparent, into = "Other")]
            struct K {
                #[serde(skip_serializing_if = "Option::is_none", flatten)]
                a: Option<u64>,
            }
        };
        let parsed = parse(&input).unwrap();
        let container = &parsed.container;
        assert!(container.rename_all.is_some());
        assert!(container.tag.is_some());
        assert!(container.untagged.is_some());
        assert!(container.transparent.is_some());
        assert!(container.into.is_some());
        let field = &named(&parsed)[0];
        assert!(field.skip_serializing_if.is_some());
        assert!(field.flatten.is_some());
    }

    #[test]
    fn reads_shapes() {
        fn kind(input: DeriveInput) -> &'static str {
            match parse(&input).unwrap().shape {
                Shape::Named(fields) if fields.is_empty() => "empty",
                Shape::Named(_) => "named",
                Shape::Tuple => "tuple",
                Shape::Unit => "unit",
                Shape::Enum => "enum",
                Shape::Union => "union",
            }
        }
        assert_eq!(kind(parse_quote! { struct K { a: u8 } }), "named");
        assert_eq!(kind(parse_quote! { struct K {} }), "empty");
        assert_eq!(kind(parse_quote! { struct K(u64); }), "tuple");
        assert_eq!(kind(parse_quote! { struct K; }), "unit");
        assert_eq!(kind(parse_quote! { enum K { A } }), "enum");
        assert_eq!(kind(parse_quote! { union K { a: u64 } }), "union");
    }

    #[test]
    fn shape_site_points_at_the_item_head() {
        let input: DeriveInput = parse_quote! { enum K { A } };
        assert_eq!(shape_site(&input).to_string(), "enum K");
        let input: DeriveInput = parse_quote! { struct K(u64, String); };
        assert_eq!(shape_site(&input).to_string(), "(u64 , String)");
        let input: DeriveInput = parse_quote! { struct K; };
        assert_eq!(shape_site(&input).to_string(), "struct K");
    }

    #[test]
    fn fails_on_an_unreadable_rename() {
        let input: DeriveInput = parse_quote! {
            struct K { #[serde(rename = 5)] a: u64 }
        };
        let err = parse(&input).err().expect("rename = 5 is not a string");
        assert_eq!(err.to_string(), "expected string literal");
    }
}
