use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn fnv<T: AsRef<[u8]>>(&self, data: T) -> u64;
}

fn main() {}
