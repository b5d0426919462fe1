//! `cluster-bench`: the benchmark workloads of BENCH.md against network-cluster (and a
//! plain tokio-tungstenite baseline), in processes of their own on loopback; and the soak,
//! a real `cluster provider` process under hostile and heavy load, phase by phase.
//!
//! It is a crate of its own so that the `cluster` command stays thin: `cluster bench ARGS`
//! runs `cluster-bench bench ARGS` and `cluster soak ARGS` runs `cluster-bench soak ARGS`
//! (the executable found next to `cluster` or on `PATH`, as
//! cargo and git run their external subcommands). The bench needs tokio-tungstenite (its
//! baseline and lean load generator), rcgen (its TLS cases) and jemalloc (its tuned
//! setup); the CLI needs none of them.
//!
//! ```text
//! cargo build --release -p cluster-bench -p cluster-cli
//! ./target/release/cluster bench --quick          # or: ./target/release/cluster-bench bench --quick
//! ./target/release/cluster soak --quick           # about a minute
//! ```
//!
//! The binary targets call [`main`] and say which allocator they were built with:
//! `cluster-bench` (jemalloc, the bench's tuned setup) and `cluster-bench-system-alloc`
//! (the system allocator, a library user's default setup, which the bench starts for the
//! typed workloads' `default` rows). This library exists only to hold the code behind
//! them.

mod baseline;
mod bench;
mod cases;
mod child;
mod children;
mod cli;
mod client;
mod common;
mod consumer_client;
mod dispatch;
mod driver;
mod jobs;
mod measure;
mod mode;
mod nats;
mod nats_baseline;
mod ours;
mod pubsub;
mod report;
mod rpc;
mod server;
mod soak;
mod spec;
mod stores;
mod sys;
mod tally;

pub use cli::main;
pub use spec::Allocator;
