use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn new(&self);
    async fn with_deadline(&self, ms: u64);
    async fn from_caller(&self);
    async fn clone(&self) -> u8;
}

fn main() {}
