//! URL query decoding: the consumer's parameters, as the original consumer encodes them.

use std::collections::HashMap;

/// A connection's parameters: the decoded URL query of its upgrade request.
pub type Parameters = HashMap<String, String>;

/// Decodes a URL query (`a=1&b=x%20y`) into parameters. Values and keys are
/// percent-decoded (`+` is a space, as in HTML forms); invalid UTF-8 is replaced with U+FFFD.
/// A key given twice keeps its last value.
///
/// ```
/// use cluster_transport::decode_query;
/// let p = decode_query("key=SECRET&name=a%20b%26c%2F%C3%A9");
/// assert_eq!(p["name"], "a b&c/é");
/// ```
pub fn decode_query(query: &str) -> Parameters {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Encodes a value as JavaScript's `encodeURIComponent` does, which the original consumer
/// uses for parameter values.
///
/// ```
/// use cluster_transport::encode_uri_component;
/// assert_eq!(encode_uri_component("a b&c/é"), "a%20b%26c%2F%C3%A9");
/// ```
pub fn encode_uri_component(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    out
}

/// Builds the query string the original consumer sends: keys as they are, values
/// encoded, and no `?` at all without parameters.
pub(crate) fn encode_query<'a>(
    params: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    let mut out = String::new();
    for (k, v) in params {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&encode_uri_component(v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_the_seed_example() {
        let p = decode_query("key=SECRET_KEY&something1=Some%20Value%201");
        assert_eq!(p["key"], "SECRET_KEY");
        assert_eq!(p["something1"], "Some Value 1");
        assert_eq!(decode_query("").len(), 0);
        assert_eq!(decode_query("flag")["flag"], "");
    }

    #[test]
    fn query_without_parameters_has_no_question_mark() {
        assert_eq!(encode_query(std::iter::empty()), "");
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(key in "[a-z]{1,8}", value in any::<String>()) {
            let mut params = std::collections::BTreeMap::new();
            params.insert(key.clone(), value.clone());
            let q = encode_query(&params);
            let decoded = decode_query(q.trim_start_matches('?'));
            prop_assert_eq!(&decoded[&key], &value);
        }

        #[test]
        fn arbitrary_queries_never_panic(q in any::<String>()) {
            let _ = decode_query(&q);
        }
    }
}
