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
//! overrides it at run time): `background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,
//! tcache_nslots_small_min:8,tcache_nslots_small_max:8`.
//!
//! - Background threads purge freed pages on the decay schedule. Without them jemalloc
//!   purges only when the thread that freed the memory allocates again, so a provider that
//!   went quiet after a burst kept what the burst grew (65-99% of it, in the soak).
//! - Dirty pages are purged over 1 s instead of jemalloc's default 10 s, muzzy ones at
//!   once: a hub's resident memory is back within 10% of its baseline a few seconds after
//!   a burst (tested in `tests/memory.rs` and by `cluster soak`), for a few more `madvise`
//!   calls while a burst lasts.
//! - Each thread caches at most 8 freed objects per small size class (jemalloc's default:
//!   up to 200). What a thread cache holds after a crowd of connections closed are the
//!   last objects freed, scattered over the crowd's slabs: each keeps its whole slab (up
//!   to 28 KiB) resident, and a thread that goes quiet never flushes them. With 200 slots,
//!   10,000 idle connections that closed left ~3 MB of slabs resident for good around a
//!   few hundred cached objects (`cluster soak`'s idle phase: +22% to +31% over where it
//!   started); with 8, +3% to +5%. The hub's CPU per call did not move beyond noise (W4,
//!   W7; BENCHMARKS.md, "Soak"). No thread caches at all (`tcache:false`) returned
//!   everything but doubled the hub's CPU per call.
//!
//! The system allocator (glibc) keeps freed memory in its arenas and reuses it for the
//! next burst instead of returning it; `MALLOC_ARENA_MAX` and glibc's trim threshold did
//! not change that in our measurements (BENCHMARKS.md, "Memory after a burst").

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
