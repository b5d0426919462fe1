// A client call does nothing unless awaited, and `with_deadline` returns the new client.
#![deny(unused_must_use)]

use cluster_macros::cluster_service;
use std::time::Duration;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn fnv(&self, data: Vec<u8>) -> u64;
}

pub fn forgets(client: HasherClient) {
    client.fnv(vec![1]);
    client.with_deadline(Duration::from_secs(1));
}

fn main() {}
