//! The hub's routing table: every subscription, the members' and the hub's own, in a
//! subject trie, and each member's subscriptions by id (to remove them, to cap them, and
//! to make a repeated subscribe a no-op).

use crate::error::{RpcError, RpcErrorKind};
use crate::pubsub::{LocalSink, SubjectTrie};
use cluster_transport::Connection;
use foldhash::fast::RandomState;
use std::collections::HashMap;
use uuid::Uuid;

/// Where a publication goes.
pub(super) enum Target {
    /// A member's subscription `sid`, sent a `Message` envelope.
    Member { conn: Connection, sid: u64 },
    /// One of the hub's own subscriptions.
    Local { sid: u64, sink: LocalSink },
}

/// Every subscription the hub routes to.
#[derive(Default)]
pub(super) struct Routes {
    trie: SubjectTrie<Target>,
    /// Each member's patterns by subscription id.
    members: HashMap<Uuid, HashMap<u64, Box<str>>, RandomState>,
    /// The hub's own patterns by subscription id.
    locals: HashMap<u64, Box<str>, RandomState>,
    /// The patterns the hub holds in its cluster, counted (none without a cluster).
    #[cfg(feature = "nats")]
    interest: Option<crate::cluster::Interest>,
}

impl Routes {
    /// From now on, tells `interest` of each pattern's first subscription and last
    /// unsubscription.
    #[cfg(feature = "nats")]
    pub(super) fn set_interest(&mut self, interest: crate::cluster::Interest) {
        self.interest = Some(interest);
    }

    fn added(&mut self, _pattern: &str) {
        #[cfg(feature = "nats")]
        if let Some(interest) = &mut self.interest {
            interest.pattern_up(_pattern);
        }
    }

    fn removed(&mut self, _pattern: &str) {
        #[cfg(feature = "nats")]
        if let Some(interest) = &mut self.interest {
            interest.pattern_down(_pattern);
        }
    }

    /// Calls `deliver` for every subscription whose pattern is exactly `pattern`.
    #[cfg(feature = "nats")]
    pub(super) fn for_each_exact(&self, pattern: &str, deliver: impl FnMut(&Target)) {
        self.trie.for_each_exact(pattern, deliver);
    }

    /// Adds member `conn`'s subscription `sid` to `pattern` (a valid one). The same id
    /// again is not a second subscription: it replaces the first.
    ///
    /// # Errors
    /// [`RpcErrorKind::TooManySubscriptions`] when the member has `limit` already.
    pub(super) fn subscribe(
        &mut self,
        conn: &Connection,
        sid: u64,
        pattern: &str,
        limit: usize,
    ) -> Result<(), RpcError> {
        let id = conn.id();
        let subscriptions = self.members.entry(id).or_default();
        match subscriptions.get(&sid) {
            Some(old) if **old == *pattern => return Ok(()),
            Some(old) => {
                let old = old.clone();
                self.trie.remove(&old, |t| is_member(t, id, sid));
                self.removed(&old);
            }
            None if subscriptions.len() >= limit => {
                return Err(RpcError::new(
                    RpcErrorKind::TooManySubscriptions,
                    format!("a member may hold {limit} subscription patterns"),
                ));
            }
            None => {}
        }
        self.members
            .entry(id)
            .or_default()
            .insert(sid, pattern.into());
        let target = Target::Member {
            conn: conn.clone(),
            sid,
        };
        self.trie.insert(pattern, target);
        self.added(pattern);
        Ok(())
    }

    /// Removes member `id`'s subscription `sid`, if it has it.
    pub(super) fn unsubscribe(&mut self, id: Uuid, sid: u64) {
        let Some(subscriptions) = self.members.get_mut(&id) else {
            return;
        };
        if let Some(pattern) = subscriptions.remove(&sid) {
            self.trie.remove(&pattern, |t| is_member(t, id, sid));
            self.removed(&pattern);
        }
    }

    /// Removes every subscription of member `id` (it left).
    pub(super) fn remove_member(&mut self, id: Uuid) {
        let Some(subscriptions) = self.members.remove(&id) else {
            return;
        };
        for (sid, pattern) in subscriptions {
            self.trie.remove(&pattern, |t| is_member(t, id, sid));
            self.removed(&pattern);
        }
    }

    /// Adds the hub's own subscription `sid` to `pattern`.
    pub(super) fn subscribe_local(&mut self, sid: u64, pattern: &str, sink: LocalSink) {
        self.locals.insert(sid, pattern.into());
        self.trie.insert(pattern, Target::Local { sid, sink });
        self.added(pattern);
    }

    /// Removes the hub's own subscription `sid`.
    pub(super) fn unsubscribe_local(&mut self, sid: u64) {
        if let Some(pattern) = self.locals.remove(&sid) {
            self.trie.remove(
                &pattern,
                |t| matches!(t, Target::Local { sid: s, .. } if *s == sid),
            );
            self.removed(&pattern);
        }
    }

    /// Each pattern and how many subscriptions use it (members' and the hub's own).
    pub(super) fn pattern_counts(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<&str, usize, RandomState> = HashMap::default();
        let patterns = self.members.values().flat_map(|subs| subs.values());
        for pattern in patterns.chain(self.locals.values()) {
            *counts.entry(pattern).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(pattern, n)| (pattern.to_owned(), n))
            .collect()
    }

    /// Subscriptions in the table.
    pub(super) fn len(&self) -> usize {
        self.trie.len()
    }

    /// Calls `deliver` for every subscription matching `subject`, once each.
    pub(super) fn for_each_match(&self, subject: &str, deliver: impl FnMut(&Target)) {
        self.trie.for_each_match(subject, deliver);
    }
}

fn is_member(target: &Target, id: Uuid, sid: u64) -> bool {
    matches!(target, Target::Member { conn, sid: s } if *s == sid && conn.id() == id)
}
