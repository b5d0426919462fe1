use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn fnv(&self, data: &[u8]) -> u64;
    async fn names(&self) -> Vec<&'static str>;
}

fn main() {}
