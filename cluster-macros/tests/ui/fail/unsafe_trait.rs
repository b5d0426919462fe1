use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub unsafe trait Hasher {
    async fn fnv(&self, data: Vec<u8>) -> u64;
}

fn main() {}
