//! Subscriptions by pattern in a trie of tokens, as NATS's sublist keeps them: a
//! publication walks one level per token of its subject, following the literal token and
//! `*`, and collects `>` subscribers on the way. Its cost depends on the subject and the
//! patterns that match it, not on how many unrelated patterns there are.

use foldhash::fast::RandomState;
use std::collections::HashMap;

/// Subscribers by pattern. Patterns and subjects are valid ones
/// ([`check`](super::subject::check)), so at most [`MAX_TOKENS`](super::MAX_TOKENS) deep.
#[derive(Debug)]
pub(crate) struct SubjectTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    literal: HashMap<Box<str>, Node<T>, RandomState>,
    star: Option<Box<Node<T>>>,
    /// Subscribers whose pattern ends at this node.
    here: Vec<T>,
    /// Subscribers whose pattern is this node's path followed by `>`.
    rest: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::default(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Default for SubjectTrie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<T> SubjectTrie<T> {
    /// Adds a subscriber of `pattern`.
    pub(crate) fn insert(&mut self, pattern: &str, subscriber: T) {
        let mut node = &mut self.root;
        for token in pattern.split('.') {
            node = match token {
                ">" => {
                    node.rest.push(subscriber);
                    self.len += 1;
                    return;
                }
                "*" => node.star.get_or_insert_with(Box::default),
                literal => node.literal.entry(literal.into()).or_default(),
            };
        }
        node.here.push(subscriber);
        self.len += 1;
    }

    /// Removes the subscribers of `pattern` that `remove` picks, and the nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &str, mut remove: impl FnMut(&T) -> bool) {
        let tokens: Vec<&str> = pattern.split('.').collect();
        self.len -= remove_in(&mut self.root, &tokens, &mut remove);
    }

    /// Calls `deliver` for every subscriber whose pattern matches `subject`, once each.
    pub(crate) fn for_each_match(&self, subject: &str, mut deliver: impl FnMut(&T)) {
        match_in(&self.root, Some(subject), &mut deliver);
    }

    /// Calls `visit` for every subscriber whose pattern is exactly `pattern`.
    #[cfg(feature = "nats")]
    pub(crate) fn for_each_exact(&self, pattern: &str, mut visit: impl FnMut(&T)) {
        let mut node = &self.root;
        for token in pattern.split('.') {
            let next = match token {
                ">" => return node.rest.iter().for_each(&mut visit),
                "*" => node.star.as_deref(),
                literal => node.literal.get(literal),
            };
            let Some(next) = next else {
                return;
            };
            node = next;
        }
        node.here.iter().for_each(visit);
    }

    /// Subscribers in the trie.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

fn remove_in<T>(node: &mut Node<T>, tokens: &[&str], remove: &mut impl FnMut(&T) -> bool) -> usize {
    let retain = |subscribers: &mut Vec<T>, remove: &mut dyn FnMut(&T) -> bool| {
        let before = subscribers.len();
        subscribers.retain(|s| !remove(s));
        before - subscribers.len()
    };
    match tokens.split_first() {
        None => retain(&mut node.here, remove),
        Some((&">", _)) => retain(&mut node.rest, remove),
        Some((&"*", rest)) => {
            let Some(star) = node.star.as_mut() else {
                return 0;
            };
            let removed = remove_in(star, rest, remove);
            if star.is_empty() {
                node.star = None;
            }
            removed
        }
        Some((literal, rest)) => {
            let Some(child) = node.literal.get_mut(*literal) else {
                return 0;
            };
            let removed = remove_in(child, rest, remove);
            if child.is_empty() {
                node.literal.remove(*literal);
            }
            removed
        }
    }
}

/// The subscribers under `node` matching `rest`, the subject's tokens still to match
/// (`None`: all matched).
fn match_in<T>(node: &Node<T>, rest: Option<&str>, deliver: &mut impl FnMut(&T)) {
    let Some(rest) = rest else {
        node.here.iter().for_each(&mut *deliver);
        return;
    };
    // `>` here matches one or more tokens, and at least one is left.
    node.rest.iter().for_each(&mut *deliver);
    let (token, after) = match rest.split_once('.') {
        Some((token, after)) => (token, Some(after)),
        None => (rest, None),
    };
    if let Some(child) = node.literal.get(token) {
        match_in(child, after, deliver);
    }
    if let Some(star) = &node.star {
        match_in(star, after, deliver);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::matches;
    use proptest::prelude::*;

    fn matching(trie: &SubjectTrie<usize>, subject: &str) -> Vec<usize> {
        let mut got = Vec::new();
        trie.for_each_match(subject, |s| got.push(*s));
        got.sort_unstable();
        got
    }

    #[test]
    fn matches_each_subscriber_once_and_removes() {
        let mut trie = SubjectTrie::default();
        trie.insert("orders.*", 1);
        trie.insert("orders.*", 2);
        trie.insert("orders.>", 3);
        trie.insert("users.>", 4);
        trie.insert(">", 5);
        trie.insert("orders.eu", 6);
        assert_eq!(matching(&trie, "orders.eu"), [1, 2, 3, 5, 6]);
        assert_eq!(matching(&trie, "orders"), [5]);
        assert_eq!(matching(&trie, "users"), [5]);
        trie.remove("orders.*", |s| *s == 2);
        trie.remove("orders.eu", |s| *s == 6);
        assert_eq!(trie.len(), 4);
        assert_eq!(matching(&trie, "orders.eu.x"), [3, 5]);
        assert_eq!(matching(&trie, "orders.eu"), [1, 3, 5]);
        for (pattern, s) in [("orders.*", 1), ("orders.>", 3), ("users.>", 4), (">", 5)] {
            trie.remove(pattern, |x| *x == s);
        }
        assert_eq!(trie.len(), 0);
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[cfg(feature = "nats")]
    #[test]
    fn exact_finds_only_that_pattern() {
        let mut trie = SubjectTrie::default();
        for (pattern, s) in [
            ("a.*", 1),
            ("a.>", 2),
            ("a.b", 3),
            ("a.*", 4),
            (">", 5),
            ("*", 6),
        ] {
            trie.insert(pattern, s);
        }
        let exact = |pattern: &str| {
            let mut got = Vec::new();
            trie.for_each_exact(pattern, |s| got.push(*s));
            got.sort_unstable();
            got
        };
        assert_eq!(exact("a.*"), [1, 4]);
        assert_eq!(exact("a.>"), [2]);
        assert_eq!(exact("a.b"), [3]);
        assert_eq!(exact(">"), [5]);
        assert_eq!(exact("*"), [6]);
        assert!(exact("a").is_empty());
        assert!(exact("a.b.c").is_empty());
        assert!(exact("x.>").is_empty());
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned())
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![token(), Just("*".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("empty", |(mut tokens, tail)| {
                if tail {
                    tokens.push(">".to_owned());
                }
                (!tokens.is_empty()).then(|| tokens.join("."))
            })
    }

    proptest! {
        #[test]
        fn agrees_with_matching_each_pattern(
            patterns in proptest::collection::vec(pattern(), 1..20),
            subject in proptest::collection::vec(token(), 1..5),
        ) {
            let subject = subject.join(".");
            let mut trie = SubjectTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            let expected: Vec<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| matches(p, &subject))
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(matching(&trie, &subject), expected);
        }
    }
}
