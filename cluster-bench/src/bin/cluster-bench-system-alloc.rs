//! `cluster-bench` with the system allocator: the processes of the bench's `default`
//! setup (a library user's: tokio's multi-thread runtime and no allocator of our choice).

fn main() -> anyhow::Result<()> {
    cluster_bench::main(cluster_bench::Allocator::System)
}
