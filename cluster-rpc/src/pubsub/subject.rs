//! Subjects and patterns, as NATS has them: tokens separated by `.`, `*` matching exactly
//! one token, `>` (last only) matching one or more remaining tokens.

use crate::envelope::MAX_SUBJECT_LEN;

/// Most tokens in a subject or pattern. Routing walks one trie level per token, so this
/// bounds the work (and the stack) of a publication.
pub const MAX_TOKENS: usize = 128;

/// Why a subject or pattern is refused, if it is.
pub(crate) fn check(text: &str, wildcards: bool) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("empty");
    }
    if text.len() > MAX_SUBJECT_LEN {
        return Err("longer than 65,535 bytes");
    }
    if text.split('.').count() > MAX_TOKENS {
        return Err("more than 128 tokens");
    }
    let mut tokens = text.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err("an empty token");
        }
        if token.contains(char::is_whitespace) {
            return Err("whitespace in a token");
        }
        let wildcard = token == "*" || token == ">";
        if !wildcard && token.contains(['*', '>']) {
            return Err("a wildcard inside a token");
        }
        if wildcard && !wildcards {
            return Err("a wildcard in a subject");
        }
        if token == ">" && tokens.peek().is_some() {
            return Err("'>' before the last token");
        }
    }
    if is_reserved(text) {
        return Err("reserved (first token starting with '__')");
    }
    Ok(())
}

/// Whether `subject` is a valid subject to publish on: 1 to [`MAX_TOKENS`] non-empty
/// tokens, no wildcards or whitespace, at most 65,535 bytes, not reserved
/// ([`is_reserved`]).
///
/// ```
/// use cluster_rpc::pubsub::is_valid_subject;
/// assert!(is_valid_subject("orders.eu.created"));
/// assert!(!is_valid_subject("orders.*"));
/// assert!(!is_valid_subject("orders..x"));
/// assert!(!is_valid_subject("__jobs.progress"));
/// ```
pub fn is_valid_subject(subject: &str) -> bool {
    check(subject, false).is_ok()
}

/// Whether `pattern` is a valid subscription pattern: a subject whose tokens may be `*`,
/// and whose last may be `>`.
///
/// ```
/// use cluster_rpc::pubsub::is_valid_pattern;
/// assert!(is_valid_pattern("orders.*.created"));
/// assert!(is_valid_pattern("orders.>"));
/// assert!(!is_valid_pattern("orders.>.x"));
/// assert!(!is_valid_pattern("orders.a*"));
/// ```
pub fn is_valid_pattern(pattern: &str) -> bool {
    check(pattern, true).is_ok()
}

/// Whether `subject` (or a pattern) is reserved for the library: its first token starts
/// with `__` (the job queue's `__jobs.` subjects, say). Nobody publishes or subscribes
/// there through the pub/sub API.
///
/// ```
/// use cluster_rpc::pubsub::is_reserved;
/// assert!(is_reserved("__jobs.progress.1"));
/// assert!(!is_reserved("jobs.__x"));
/// ```
pub fn is_reserved(subject: &str) -> bool {
    subject.starts_with("__")
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
    fn validity() {
        assert!(is_valid_pattern(">"));
        assert!(is_valid_pattern("*"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("a..b"));
        assert!(!is_valid_pattern("a b"));
        assert!(!is_valid_subject("a.>"));
        assert!(is_valid_subject("a"));
        assert!(is_valid_subject(&vec!["a"; MAX_TOKENS].join(".")));
        assert!(!is_valid_subject(&vec!["a"; MAX_TOKENS + 1].join(".")));
        assert!(!is_valid_subject(&"a".repeat(MAX_SUBJECT_LEN + 1)));
        assert!(!is_valid_pattern("__jobs.>"));
        assert_eq!(check("a.*", false), Err("a wildcard in a subject"));
    }
}
