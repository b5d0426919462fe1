//! A child process of the bench: a server or a group of clients, as its spec says.

use crate::common::fail;
use crate::spec::{Allocator, ChildSpec};
use crate::{client, server, sys};
use anyhow::Context;

/// Runs the child described by `spec` (JSON) until its stdin ends, in an executable
/// built with `allocator`.
pub(crate) fn run(spec: &str, allocator: Allocator) -> anyhow::Result<()> {
    sys::die_with_parent();
    sys::raise_nofile();
    let spec: ChildSpec = serde_json::from_str(spec).context("bad child spec")?;
    let setup = spec.setup();
    if setup.allocator() != allocator {
        fail(&anyhow::anyhow!(
            "the {} setup needs {:?}, this executable has {allocator:?}",
            setup.name(),
            setup.allocator()
        ));
    }
    let result = match spec {
        ChildSpec::Server(spec) => server::main(spec),
        ChildSpec::Clients(spec) => client::main(spec),
    };
    if let Err(error) = result {
        fail(&error);
    }
    Ok(())
}
