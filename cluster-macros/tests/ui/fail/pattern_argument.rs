use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn add(&self, (a, b): (u8, u8)) -> u8;
    async fn first(&self, ref data: Vec<u8>) -> u8;
}

fn main() {}
