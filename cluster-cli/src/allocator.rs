//! The process's allocator: jemalloc with the cargo feature `jemalloc` (off by default),
//! else the system's.
//!
//! A provider run as a hub holds thousands of connections; jemalloc keeps less memory per
//! idle connection and returns it sooner after a burst (see BENCHMARKS.md, W6 and W6s). A
//! plain `cargo install` of the CLI should stay a thin build, so the choice is the
//! installer's: `cargo install --path cluster-cli --features jemalloc`.
//!
//! Tuning, compiled into jemalloc through `JEMALLOC_SYS_WITH_MALLOC_CONF` in the
//! workspace's `.cargo/config.toml` (the `_RJEM_MALLOC_CONF` environment variable still
//! overrides it at run time): `background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0`.
//!
//! - Background threads purge freed pages on the decay schedule. Without them jemalloc
//!   purges only when the thread that freed the memory allocates again, so a provider that
//!   went quiet after a burst kept what the burst grew (65-99% of it, in the soak).
//! - Dirty pages are purged over 1 s instead of jemalloc's default 10 s, muzzy ones at
//!   once: a hub's resident memory is back within 10% of its baseline a few seconds after
//!   a burst (tested in `tests/memory.rs` and by `cluster soak`), for a few more `madvise`
//!   calls while a burst lasts.
//!
//! The system allocator (glibc) keeps freed memory in its arenas and reuses it for the
//! next burst instead of returning it; `MALLOC_ARENA_MAX` and glibc's trim threshold did
//! not change that in our measurements (BENCHMARKS.md, "Memory after a burst").

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
