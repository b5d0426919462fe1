use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    fn fnv(&self, data: Vec<u8>) -> u64;
}

fn main() {}
