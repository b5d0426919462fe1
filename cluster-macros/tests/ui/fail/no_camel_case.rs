use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn _1(&self);
    async fn self_(&self);
}

fn main() {}
