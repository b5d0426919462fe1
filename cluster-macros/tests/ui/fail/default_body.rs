use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn ping(&self) {}
}

fn main() {}
