//! Settings shared by hubs and members.

use crate::codec::CodecKind;
use crate::peer::CallLimits;
use crate::service::{Service, Services};
use std::sync::Arc;
use std::time::Duration;

/// Default deadline of a call that does not set its own: 30 s.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Default limit of incoming calls running at once per connection: 1024.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;
/// Default limit of subscription patterns one member holds on a hub: 10,000.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;

/// What a node serves and how it calls.
#[derive(Debug, Clone)]
pub(crate) struct NodeConfig {
    pub(crate) services: Services,
    pub(crate) codec: CodecKind,
    pub(crate) limits: CallLimits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            services: Services::default(),
            codec: CodecKind::default(),
            limits: CallLimits {
                default_deadline: DEFAULT_DEADLINE,
                max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            },
        }
    }
}

impl NodeConfig {
    pub(crate) fn serve(&mut self, service: impl Service) {
        self.services.add(Arc::new(service));
    }
}
