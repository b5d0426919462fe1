use cluster_macros::cluster_service;

#[cluster_service(crate = "cluster_rpc")]
pub struct Hasher;

fn main() {}
