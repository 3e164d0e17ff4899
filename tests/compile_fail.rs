//! Pins the compile-time diagnostics of strategies, cache operations and `#[derive(CacheKey)]`.
//!
//! Re-bless after a change to a message or to the lines it points at with
//! `TRYBUILD=overwrite cargo test --test compile_fail`.

#[test]
fn compile_errors_are_pinned() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
