// A type without serde traits: the macro's own checks come first and point at the type; the
// errors from inside the serde derives follow.
use cluster_macros::cluster_service;

pub struct NotSerde;

#[derive(serde::Serialize)]
pub struct SerializeOnly;

#[cluster_service(crate = "cluster_rpc")]
pub trait Hasher {
    async fn take(&self, value: NotSerde);
    async fn give(&self) -> SerializeOnly;
}

fn main() {}
