use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn hash_bytes(&self, data: Vec<u8>) -> u64;
    #[allow(non_snake_case)]
    async fn hashBytes(&self, data: Vec<u8>) -> u64;
}

fn main() {}
