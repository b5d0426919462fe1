use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async unsafe fn fnv(&self, data: Vec<u8>) -> u64;
    async extern "C" fn ping(&self);
}

fn main() {}
