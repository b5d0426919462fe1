//! Subjects and patterns, as NATS has them: tokens separated by `.`, `*` matching exactly
//! one token, `>` (last only) matching one or more remaining tokens.

use std::collections::HashMap;

/// Whether `subject` is a valid subject to publish on: non-empty tokens, no wildcards.
///
/// ```
/// use cluster_rpc::pubsub::is_valid_subject;
/// assert!(is_valid_subject("orders.eu.created"));
/// assert!(!is_valid_subject("orders.*"));
/// assert!(!is_valid_subject("orders..x"));
/// ```
pub fn is_valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace))
}

/// Whether `pattern` is a valid subscription pattern.
///
/// ```
/// use cluster_rpc::pubsub::is_valid_pattern;
/// assert!(is_valid_pattern("orders.*.created"));
/// assert!(is_valid_pattern("orders.>"));
/// assert!(!is_valid_pattern("orders.>.x"));
/// assert!(!is_valid_pattern("orders.a*"));
/// ```
pub fn is_valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() {
        return false;
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.contains(char::is_whitespace)
            && (*t == "*" || *t == ">" || !t.contains(['*', '>']))
            && (*t != ">" || i == tokens.len() - 1)
    })
}

/// Whether `subject` matches `pattern`.
///
/// ```
/// use cluster_rpc::pubsub::matches;
/// assert!(matches("orders.*.created", "orders.eu.created"));
/// assert!(matches("orders.>", "orders.eu.created"));
/// assert!(!matches("orders.>", "orders"));
/// assert!(!matches("orders.*", "orders.eu.created"));
/// ```
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        if p == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(s) if p == "*" || p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Subscribers grouped by pattern; a publish matches each distinct pattern once.
#[derive(Debug)]
pub(crate) struct SubjectTable<T> {
    by_pattern: HashMap<String, Vec<T>>,
}

impl<T> Default for SubjectTable<T> {
    fn default() -> Self {
        Self {
            by_pattern: HashMap::new(),
        }
    }
}

impl<T> SubjectTable<T> {
    pub(crate) fn insert(&mut self, pattern: &str, subscriber: T) {
        self.by_pattern
            .entry(pattern.to_owned())
            .or_default()
            .push(subscriber);
    }

    /// Removes every subscriber `remove` picks.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.by_pattern.retain(|_, subs| {
            subs.retain(&mut keep);
            !subs.is_empty()
        });
    }

    /// Calls `deliver` for every subscriber whose pattern matches `subject`.
    pub(crate) fn for_each_match(&self, subject: &str, mut deliver: impl FnMut(&T)) {
        for (pattern, subs) in &self.by_pattern {
            if matches(pattern, subject) {
                subs.iter().for_each(&mut deliver);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_pattern.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_routing_table() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*", "a.b.c", false),
            ("*.*.*", "a.b.c", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "a", false),
            (">", "a.b", true),
            ("a.*.>", "a.b.c", true),
            ("a.*.>", "a.b", false),
        ];
        for (pattern, subject, expected) in cases {
            assert_eq!(
                matches(pattern, subject),
                expected,
                "{pattern} vs {subject}"
            );
        }
    }

    #[test]
    fn table_matches_each_pattern_and_removes() {
        let mut table = SubjectTable::default();
        table.insert("orders.*", 1);
        table.insert("orders.*", 2);
        table.insert("orders.>", 3);
        table.insert("users.>", 4);
        let mut got = Vec::new();
        table.for_each_match("orders.eu", |s| got.push(*s));
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3]);
        table.retain(|s| *s != 2);
        assert_eq!(table.len(), 3);
        let mut got = Vec::new();
        table.for_each_match("orders.eu.x", |s| got.push(*s));
        assert_eq!(got, [3]);
    }

    #[test]
    fn validity() {
        assert!(is_valid_pattern(">"));
        assert!(is_valid_pattern("*"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("a..b"));
        assert!(!is_valid_pattern("a b"));
        assert!(!is_valid_subject("a.>"));
        assert!(is_valid_subject("a"));
    }
}
