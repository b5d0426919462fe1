// Every error is reported, not only the first: the arguments', the trait's and each method's.
use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc", extra)]
pub trait Hasher<T> {
    fn fnv(self, data: Vec<u8>) -> u64;
    async fn add(&self, (a, b): (u8, u8)) -> u8;
    async fn new(&self);
}

fn main() {}
