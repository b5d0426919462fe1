// An implementation whose future is not `Send` is rejected at the implementation.
use cluster_macros::cluster_service;
use std::rc::Rc;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn fnv(&self, data: Vec<u8>) -> u64;
}

struct Impl;

async fn yield_now() {}

impl Hasher for Impl {
    async fn fnv(&self, data: Vec<u8>) -> u64 {
        let held = Rc::new(data.len() as u64);
        yield_now().await;
        *held
    }
}

fn main() {}
