//! The derive macro for [cacheobj](https://docs.rs/cacheobj)'s `CacheKey` trait.
//!
//! Do not depend on this crate directly: use the derive through the main
//! crate, as `cacheobj::CacheKey`, which re-exports it next to the trait of
//! the same name. The generated code names the trait as
//! `::cacheobj::CacheKey`, so the `cacheobj` crate must be a dependency of
//! the crate that uses the derive.
//!
//! The macro works in three steps, each in its own module:
//!
//! 1. `parse` reads the item and its `#[serde(...)]` attributes into a plain
//!    model, failing only on attributes it cannot read;
//! 2. `validate` applies the rules of a cache key (a struct with named,
//!    uniquely named, always-serialized fields) and yields the list of serde
//!    field names;
//! 3. `expand` writes the `impl ::cacheobj::CacheKey` block.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

use proc_macro::TokenStream;

mod expand;
mod parse;
mod validate;

/// Derives `cacheobj::CacheKey` for a struct with named fields.
///
/// The derive sets `CacheKey::FIELDS` to the serde names of the fields, in
/// declaration order (the order serde serializes them in). It reads the
/// `#[serde(...)]` attributes that change those names:
///
/// - `#[serde(rename = "x")]` and `#[serde(rename(serialize = "x"))]` list
///   the field as `x`;
/// - `#[serde(skip)]` and `#[serde(skip_serializing)]` leave the field out;
/// - a raw identifier such as `r#type` is listed as `type`, as serde does.
///
/// It rejects, with a compile error that says what to do instead, anything
/// that would make the serialized fields differ from the list: tuple and unit
/// structs, enums, unions, structs without fields or whose fields are all
/// skipped, two fields with the same serde name, `skip_serializing_if` and
/// `flatten` on a field, and `rename_all`, `tag`, `untagged`, `transparent`
/// and `into` on the struct.
/// Every other serde attribute is ignored.
///
/// The impl copies the struct's generics and where clause and adds no bounds.
///
/// Use it through `cacheobj`, next to serde's `Serialize` derive. (This crate
/// cannot depend on `cacheobj`, so the example below is not compiled here.)
///
/// ```text
/// use cacheobj::CacheKey;
/// use serde::Serialize;
///
/// #[derive(Serialize, CacheKey)]
/// struct ItemKey {
///     item_id: u64,
///     #[serde(rename = "region")]
///     region_code: String,
/// }
///
/// assert_eq!(ItemKey::FIELDS, ["item_id", "region"]);
/// ```
#[proc_macro_derive(CacheKey, attributes(serde))]
pub fn derive_cache_key(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Parse, validate and expand one derive input.
fn derive(input: &syn::DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let parsed = parse::parse(input)?;
    let key = validate::validate(parsed)?;
    Ok(expand::expand(&key))
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    #[test]
    fn derive_reports_errors_as_tokens() {
        let input: syn::DeriveInput = parse_quote! { struct K(u64); };
        let err = super::derive(&input).unwrap_err();
        let tokens = err.into_compile_error().to_string();
        assert!(tokens.contains("compile_error"), "{tokens}");
    }

    #[test]
    fn derive_expands_a_valid_key() {
        let input: syn::DeriveInput = parse_quote! {
            struct K { a: u64, #[serde(rename = "bee")] b: u64 }
        };
        let tokens = super::derive(&input).unwrap().to_string();
        assert!(tokens.contains(":: cacheobj :: CacheKey for K"), "{tokens}");
        assert!(tokens.contains("\"a\" , \"bee\""), "{tokens}");
    }
}
