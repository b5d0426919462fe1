//! The `cluster-bench` executable: see the crate docs of `cluster_bench`.

// jemalloc in every bench process: the tuned setup the figures in BENCHMARKS.md use.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    cluster_bench::main(cluster_bench::Allocator::Jemalloc)
}
