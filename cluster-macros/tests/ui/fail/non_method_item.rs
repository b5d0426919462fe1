use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    const SEED: u64;
    type Output;
    async fn fnv(&self, data: Vec<u8>) -> u64;
}

fn main() {}
