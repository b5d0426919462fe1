//! Who may see the admin page and who may act: two tokens, compared in constant time.

use cluster_transport::HttpRequest;
use std::fmt;
use subtle::ConstantTimeEq;

/// What a viewer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// See everything and act (disconnect, requeue, delete, cancel).
    Admin,
    /// See everything, act on nothing.
    ReadOnly,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

/// The admin token and the optional read-only one.
#[derive(Clone)]
pub(crate) struct Tokens {
    pub(crate) admin: String,
    pub(crate) read_only: Option<String>,
}

impl Tokens {
    /// The role of the request's token: `Authorization: Bearer …`, else `?token=…`.
    /// Both tokens are always compared, so timing tells nothing about either.
    pub(crate) fn role(&self, request: &HttpRequest) -> Option<Role> {
        let from_query;
        let given = match request.bearer_token() {
            Some(token) => token,
            None => {
                from_query = request.parameters().remove("token").unwrap_or_default();
                from_query.as_str()
            }
        };
        self.role_of(given)
    }

    /// The role of a token.
    pub(crate) fn role_of(&self, given: &str) -> Option<Role> {
        if given.is_empty() {
            return None;
        }
        let admin = equal(given, &self.admin);
        let read_only = self
            .read_only
            .as_deref()
            .is_some_and(|expected| equal(given, expected));
        if admin {
            Some(Role::Admin)
        } else if read_only {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }
}

fn equal(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("admin", &"<redacted>")
            .field("read_only", &self.read_only.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_token() {
        let tokens = Tokens {
            admin: "adm".into(),
            read_only: Some("view".into()),
        };
        assert_eq!(tokens.role_of("adm"), Some(Role::Admin));
        assert_eq!(tokens.role_of("view"), Some(Role::ReadOnly));
        assert_eq!(tokens.role_of("ad"), None);
        assert_eq!(tokens.role_of("admx"), None);
        assert_eq!(tokens.role_of(""), None);
        let admin_only = Tokens {
            admin: "adm".into(),
            read_only: None,
        };
        assert_eq!(admin_only.role_of("view"), None);
        assert!(!format!("{tokens:?}").contains("adm\""));
    }
}
