//! What `#[cluster_service]` generates code against: a [`Service`] a node serves, and a
//! [`ServiceClient`] built on a [`Caller`](crate::Caller).

use crate::codec::CodecKind;
use crate::error::RpcError;
use crate::metrics::ServiceMetrics;
use crate::peer::Caller;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A service a node serves: a name, its methods, and a dispatcher. Implemented by the
/// `{Trait}Server` types `#[cluster_service]` generates.
pub trait Service: Send + Sync + 'static {
    /// The service's name, as callers address it (the trait's name).
    fn name(&self) -> &'static str;

    /// The service's method names.
    fn methods(&self) -> &'static [&'static str];

    /// Decodes a request for `method` and returns the future that runs it and encodes the
    /// response. Decoding happens now, so a bad request is an error at once.
    ///
    /// # Errors
    /// [`RpcErrorKind::NoSuchMethod`](crate::RpcErrorKind::NoSuchMethod) or
    /// [`RpcErrorKind::Decode`](crate::RpcErrorKind::Decode).
    fn call(
        &self,
        method: &str,
        request: &[u8],
        codec: CodecKind,
    ) -> Result<BoxFuture<'static, Result<Vec<u8>, RpcError>>, RpcError>;
}

/// A typed client of one service. Implemented by the `{Trait}Client` types
/// `#[cluster_service]` generates.
pub trait ServiceClient: Sized {
    /// The name of the service this client calls.
    const SERVICE: &'static str;

    /// A client that sends its calls through `caller`.
    fn from_caller(caller: Caller) -> Self;
}

/// The services one node serves, by name.
#[derive(Clone, Default)]
pub(crate) struct Services {
    by_name: HashMap<&'static str, Served>,
}

/// A service and the metric handles of its calls.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) service: Arc<dyn Service>,
    pub(crate) metrics: Arc<ServiceMetrics>,
}

impl Services {
    pub(crate) fn add(&mut self, service: Arc<dyn Service>) {
        let metrics = Arc::new(ServiceMetrics::new(service.name(), service.methods()));
        self.by_name
            .insert(service.name(), Served { service, metrics });
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Served> {
        self.by_name.get(name)
    }

    /// The names.
    pub(crate) fn names_list(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// The names, comma-separated, as members announce them in their connect parameters.
    pub(crate) fn names(&self) -> String {
        let mut names: Vec<_> = self.by_name.keys().copied().collect();
        names.sort_unstable();
        names.join(",")
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}
