use cluster_macros::cluster_service;
use std::marker::PhantomData;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct NotSend {
    #[serde(skip)]
    marker: PhantomData<*const ()>,
}

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn take(&self, value: NotSend);
}

fn main() {}
