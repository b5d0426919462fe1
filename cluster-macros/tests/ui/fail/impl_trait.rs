use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn fnv(&self, data: impl AsRef<[u8]>) -> u64;
    async fn digits(&self, n: u64) -> Vec<impl Into<u8>>;
}

fn main() {}
