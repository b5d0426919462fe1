//! Who may connect: the URL-parameter check and the async auth handler.

use crate::query::Parameters;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The upgrade request as the auth handler sees it, before the connection exists.
#[derive(Clone)]
pub struct UpgradeRequest {
    pub(crate) ip: IpAddr,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) parameters: Parameters,
}

impl UpgradeRequest {
    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The request path, without the query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Every header as sent, in order (name, value).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The decoded URL parameters.
    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// The parameters alone; the rest of the request is dropped.
    pub(crate) fn into_parameters(self) -> Parameters {
        self.parameters
    }
}

impl fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parameter values and headers may hold secrets: keys and header names only.
        f.debug_struct("UpgradeRequest")
            .field("ip", &self.ip)
            .field("path", &self.path)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A refusal of an upgrade with a status and a body of its own, from an
/// [`upgrade_check`](crate::ProviderBuilder::upgrade_check): say, 406 for a codec the
/// provider does not speak. The consumer treats it as a fatal rejection and its error
/// carries the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub(crate) status: u16,
    pub(crate) body: String,
}

impl Refusal {
    /// A refusal with an HTTP status (4xx) and a body telling the client why.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

/// A synchronous check of an upgrade request after auth.
pub(crate) type UpgradeCheck = Arc<dyn Fn(&UpgradeRequest) -> Result<(), Refusal> + Send + Sync>;

/// An async verdict on an upgrade request: `true` accepts.
pub(crate) type AuthHandler = Arc<dyn Fn(UpgradeRequest) -> BoxFuture<'static, bool> + Send + Sync>;

/// Wraps a user's async closure into an [`AuthHandler`].
pub(crate) fn auth_handler<F, Fut>(f: F) -> AuthHandler
where
    F: Fn(UpgradeRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(move |req| Box::pin(f(req)))
}

/// Whether every required parameter is present with an identical value. Values are
/// compared in constant time, so a timing attack learns nothing about the secret's bytes.
pub(crate) fn parameters_match(required: &BTreeMap<String, String>, given: &Parameters) -> bool {
    // Check every key, even after a mismatch, so timing does not tell which one failed.
    required.iter().fold(true, |ok, (key, expected)| {
        let matches = given
            .get(key)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(expected.as_bytes())));
        ok & matches
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_parameters() {
        let mut required = BTreeMap::new();
        required.insert("key".to_owned(), "SECRET".to_owned());
        let mut given = Parameters::new();
        assert!(!parameters_match(&required, &given));
        given.insert("key".into(), "SECRE".into());
        assert!(!parameters_match(&required, &given));
        given.insert("key".into(), "SECRET".into());
        given.insert("extra".into(), "metadata".into());
        assert!(parameters_match(&required, &given));
        assert!(parameters_match(&BTreeMap::new(), &Parameters::new()));
    }

    #[test]
    fn debug_hides_values() {
        let req = UpgradeRequest {
            ip: IpAddr::from([127, 0, 0, 1]),
            path: "/connect".into(),
            headers: vec![("Authorization".into(), "Bearer hunter2".into())],
            parameters: [("key".to_owned(), "hunter2".to_owned())].into(),
        };
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("hunter2"));
        assert_eq!(req.header("authorization"), Some("Bearer hunter2"));
    }
}
