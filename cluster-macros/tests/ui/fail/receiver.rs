use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn by_value(self);
    async fn by_mut(&mut self);
    async fn boxed(self: Box<Self>);
}

fn main() {}
