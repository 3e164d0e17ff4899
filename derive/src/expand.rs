//! Step 3: write the `impl ::cacheobj::CacheKey` block for a validated key.

use proc_macro2::TokenStream;
use quote::quote;

use crate::validate::KeyDef;

/// The impl of `::cacheobj::CacheKey` for the key: its generics and where
/// clause copied as they are, no bound added, `FIELDS` listing the serde
/// names.
pub(crate) fn expand(key: &KeyDef<'_>) -> TokenStream {
    let ident = key.ident;
    let (impl_generics, type_generics, where_clause) = key.generics.split_for_impl();
    let fields = &key.fields;
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cacheobj::CacheKey for #ident #type_generics #where_clause {
            const FIELDS: &'static [&'static str] = &[#(#fields),*];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse::parse, validate::validate};
    use syn::{parse_quote, DeriveInput};

    fn expand_input(input: DeriveInput) -> String {
        let key = validate(parse(&input).unwrap()).unwrap();
        expand(&key).to_string()
    }

    #[test]
    fn expands_a_plain_key() {
        let expected = quote! {
            #[automatically_derived]
            impl ::cacheobj::CacheKey for ItemKey {
                const FIELDS: &'static [&'static str] = &["item_id", "type"];
            }
        };
        assert_eq!(
            expand_input(parse_quote! { struct ItemKey { item_id: u64, r#type: u8 } }),
            expected.to_string()
        );
    }

    #[test]
    fn copies_generics_and_where_clause_without_adding_bounds() {
        let expected = quote! {
            #[automatically_derived]
            impl<'a, T: Clone, const N: usize> ::cacheobj::CacheKey for K<'a, T, N>
            where
                T: Send
            {
                const FIELDS: &'static [&'static str] = &["name", "items"];
            }
        };
        assert_eq!(
            expand_input(parse_quote! {
                struct K<'a, T: Clone = u8, const N: usize = 3> where T: Send {
                    name: &'a str,
                    items: [T; N],
                }
            }),
            expected.to_string()
        );
    }

    #[test]
    fn escapes_names_as_string_literals() {
        let out = expand_input(parse_quote! {
            struct K { #[serde(rename = "a\"b\\c")] a: u64 }
        });
        assert!(out.contains(r#"& ["a\"b\\c"]"#), "{out}");
    }
}
