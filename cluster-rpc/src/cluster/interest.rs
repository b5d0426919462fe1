//! What a hub holds in NATS: a subscription per pattern its members (or the hub itself)
//! subscribe to, a queue subscription per service served here, one per member (for
//! calls addressed to it), and its reply and cancel subjects. Patterns and services are
//! counted, so each is subscribed once and dropped with its last user.
//!
//! One task makes the changes in order; a confirmation queued behind changes runs once
//! the NATS server has them (a round trip to it), so a member's subscribe or connect is answered only
//! when other hubs' traffic can reach it.

use super::calls::CallBridge;
use super::{ClusterHub, Subjects};
use async_nats::connection::State;
use async_nats::{Message, Subscriber};
use foldhash::fast::RandomState;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use uuid::Uuid;

/// How long a confirmation waits for NATS before it runs anyway (the local side works at
/// once; NATS gets the subscriptions when it is back).
const CONFIRM_WAIT: Duration = Duration::from_secs(1);

/// One NATS subscription of the hub.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// Publications matching a pub/sub pattern.
    Pattern(Box<str>),
    /// Calls to any member serving a service (a queue group per service).
    Service(Box<str>),
    /// Calls to one member of this hub.
    Member(Uuid),
    /// Answers to this hub's calls.
    Replies,
    /// Cancellations of calls served here.
    Cancels,
    /// Hubs saying hello and goodbye.
    Presence,
    /// Broadcasts to gather from this hub's members.
    Gathers,
}

/// What the interest task does, in order.
pub(crate) enum Command {
    /// Subscribe in NATS.
    Add(Key),
    /// Drop a NATS subscription.
    Remove(Key),
    /// Run once NATS has every subscription asked for before (or [`CONFIRM_WAIT`] passed).
    Confirm(Box<dyn FnOnce() + Send>),
}

/// Subscriptions counted by key; tells the interest task of each first and last use.
pub(crate) struct Interest {
    counts: HashMap<Key, usize, RandomState>,
    tx: mpsc::UnboundedSender<Command>,
}

impl Interest {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Command>) -> Self {
        Self {
            counts: HashMap::default(),
            tx,
        }
    }

    /// One more user of `key`.
    pub(crate) fn up(&mut self, key: Key) {
        if let Some(count) = self.counts.get_mut(&key) {
            *count += 1;
            return;
        }
        self.counts.insert(key.clone(), 1);
        let _ = self.tx.send(Command::Add(key));
    }

    /// One user of `key` fewer.
    pub(crate) fn down(&mut self, key: Key) {
        let Some(count) = self.counts.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&key);
            let _ = self.tx.send(Command::Remove(key));
        }
    }

    /// One more subscription of the pub/sub `pattern`.
    pub(crate) fn pattern_up(&mut self, pattern: &str) {
        self.up(Key::Pattern(pattern.into()));
    }

    /// One subscription of the pub/sub `pattern` fewer.
    pub(crate) fn pattern_down(&mut self, pattern: &str) {
        self.down(Key::Pattern(pattern.into()));
    }
}

/// Makes the hub's NATS subscriptions follow the commands, and hands what arrives on
/// them to the hub and its calls.
pub(crate) async fn hold(
    client: async_nats::Client,
    subjects: Arc<Subjects>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    hub: Weak<dyn ClusterHub>,
    calls: Arc<CallBridge>,
) {
    // Each reader's stop: it unsubscribes, then says so on the sender it is given.
    let mut readers: HashMap<Key, oneshot::Sender<oneshot::Sender<()>>, RandomState> =
        HashMap::default();
    let mut tasks = JoinSet::new();
    let mut batch = Vec::with_capacity(64);
    let mut confirms = Vec::new();
    let mut unsubscribing = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        for command in batch.drain(..) {
            match command {
                Command::Add(key) => {
                    let subscribed = match &key {
                        Key::Service(service) => {
                            let subject = subjects.service(service);
                            client.queue_subscribe(subject.clone(), subject).await
                        }
                        key => client.subscribe(subjects.of(key)).await,
                    };
                    match subscribed {
                        Ok(subscriber) => {
                            let (stop, stopped) = oneshot::channel();
                            let reader = read(
                                subscriber,
                                key.clone(),
                                Arc::clone(&subjects),
                                Weak::clone(&hub),
                                Arc::clone(&calls),
                                stopped,
                            );
                            tasks.spawn(reader);
                            readers.insert(key, stop);
                        }
                        Err(error) => {
                            tracing::error!(?key, cause = %error, "cannot subscribe in NATS");
                        }
                    }
                }
                Command::Remove(key) => {
                    if let Some(stop) = readers.remove(&key) {
                        let (done, unsubscribed) = oneshot::channel();
                        let _ = stop.send(done);
                        unsubscribing.push(unsubscribed);
                    }
                }
                Command::Confirm(then) => confirms.push(then),
            }
        }
        while tasks.try_join_next().is_some() {}
        if confirms.is_empty() {
            unsubscribing.clear();
            continue;
        }
        if client.connection_state() == State::Connected {
            let settled = async {
                for unsubscribed in unsubscribing.drain(..) {
                    let _ = unsubscribed.await;
                }
                round_trip(&client, &subjects).await;
            };
            let _ = tokio::time::timeout(CONFIRM_WAIT, settled).await;
        }
        unsubscribing.clear();
        confirms.drain(..).for_each(|then| then());
    }
}

/// Returns once the server has processed everything this client sent before: a request
/// on a subject nobody holds, which the server itself answers ("no responders") after
/// the subscriptions and unsubscriptions queued ahead of it. (The client's `flush` only
/// writes them to the socket.)
pub(super) async fn round_trip(client: &async_nats::Client, subjects: &Subjects) {
    let _ = client
        .request(subjects.barrier(), bytes::Bytes::new())
        .await;
}

/// Hands what one subscription receives to the hub (publications) or its calls, until
/// `stop` (or the interest task's end): then drains it (what the server sent before it
/// had the UNSUB is still handed on), and says so if asked.
async fn read(
    mut subscriber: Subscriber,
    key: Key,
    subjects: Arc<Subjects>,
    hub: Weak<dyn ClusterHub>,
    calls: Arc<CallBridge>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        tokio::select! {
            biased;
            asked = &mut stop => {
                // Drained, not unsubscribed: the client keeps handing this subscription
                // what the server sent it until a PING after the UNSUB comes back (the
                // vendored async-nats' fix; its `unsubscribe` forgets the subscription at
                // once and drops what is still on the way). So a call the server gave
                // this hub just as the service's last member here left is answered
                // `NoPeer` and sent elsewhere, not lost until its deadline.
                let _ = subscriber.drain().await;
                if let Ok(done) = asked {
                    let _ = done.send(());
                }
                while let Some(message) = subscriber.next().await {
                    dispatch(&key, message, &subjects, &hub, &calls);
                }
                return;
            }
            message = subscriber.next() => match message {
                Some(message) => dispatch(&key, message, &subjects, &hub, &calls),
                None => return,
            },
        }
    }
}

fn dispatch(
    key: &Key,
    message: Message,
    subjects: &Subjects,
    hub: &Weak<dyn ClusterHub>,
    calls: &Arc<CallBridge>,
) {
    match key {
        Key::Pattern(pattern) => {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            if let Some(subject) = subjects.published_subject(&message.subject) {
                hub.deliver_remote(pattern, subject, &message.payload);
            }
        }
        Key::Service(_) => calls.serve(message, None),
        Key::Member(id) => calls.serve(message, Some(*id)),
        Key::Replies => calls.answer(&message),
        Key::Cancels => calls.cancelled(&message.payload),
        Key::Presence => calls.presence(&message.payload),
        Key::Gathers => calls.serve_gather(message),
    }
}
