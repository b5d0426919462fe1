//! Compile tests of `#[cluster_service]`: `ui/pass` must compile (and run), `ui/fail` must
//! fail with exactly the checked-in `.stderr`.
//!
//! The `.stderr` files were produced with rustc 1.95.0 (59807616e 2026-04-14). Other
//! compilers word or place some messages differently; regenerate them with
//! `TRYBUILD=overwrite cargo test -p cluster-macros --test ui` and review every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
