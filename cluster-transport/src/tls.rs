//! TLS (`wss://`) with rustls and its `ring` crypto provider, on both sides: the
//! provider's certificate and key from PEM files (an encrypted PKCS#8 key decrypted with
//! the seed's `passphrase`), and the consumer's trust roots (the system's, or a CA file).
//!
//! Everything here runs once, when a provider binds or a consumer starts, on a blocking
//! thread: files are read and a key may be decrypted with a deliberately slow KDF.
//! Secrets (the passphrase, key bytes) are never put into an error or a log line.

use crate::error::{BindError, BoxError, ConnectError, ConnectErrorKind};
use crate::options::SslOptions;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The crypto provider of both sides, named explicitly so that another rustls provider
/// enabled elsewhere in the user's build (aws-lc-rs) cannot make the choice ambiguous.
fn crypto() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bind_error(reason: String, source: Option<BoxError>) -> BindError {
    BindError::Tls { reason, source }
}

/// Says which seed options rustls gives no meaning to (see [`SslOptions`]).
pub(crate) fn log_ignored(ssl: &SslOptions) {
    if let Some(dh) = &ssl.dh_params {
        tracing::info!(
            path = %dh.display(),
            "ssl.dh_params ignored: rustls key exchange is ECDHE only, it needs no DH parameters"
        );
    }
    if ssl.prefer_low_memory_usage {
        tracing::info!(
            "ssl.prefer_low_memory_usage ignored: an OpenSSL mode rustls has no counterpart for"
        );
    }
}

/// Loads the provider's certificate and key and builds the acceptor every TLS connection
/// is handshaken with.
///
/// # Errors
/// [`BindError::Tls`] naming the file and what is wrong with it.
pub(crate) fn acceptor(ssl: &SslOptions) -> Result<TlsAcceptor, BindError> {
    if ssl.cert.as_os_str().is_empty() || ssl.key.as_os_str().is_empty() {
        return Err(bind_error(
            "ssl needs both `cert` and `key` (PEM files)".into(),
            None,
        ));
    }
    let certs = load_certs(&ssl.cert, "ssl.cert")?;
    let key = load_key(&ssl.key, ssl.passphrase.as_deref())?;
    let config = ServerConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| bind_error(format!("rustls: {e}"), Some(Box::new(e))))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            let reason = match &e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the key in ssl.key {} does not match the certificate in ssl.cert {}",
                    ssl.key.display(),
                    ssl.cert.display()
                ),
                other => format!(
                    "cannot use ssl.cert {} with ssl.key {}: {other}",
                    ssl.cert.display(),
                    ssl.key.display()
                ),
            };
            bind_error(reason, Some(Box::new(e)))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, BindError> {
    std::fs::read(path).map_err(|e| {
        bind_error(
            format!("cannot read {what} {}: {e}", path.display()),
            Some(Box::new(e)),
        )
    })
}

/// Every `CERTIFICATE` in a PEM file, in order.
fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, BindError> {
    let bytes = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            bind_error(
                format!("{what} {} is not valid PEM: {e}", path.display()),
                Some(Box::new(e)),
            )
        })?;
    if certs.is_empty() {
        return Err(bind_error(
            format!("{what} {} holds no CERTIFICATE", path.display()),
            None,
        ));
    }
    Ok(certs)
}

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The private key of a PEM file: plain (PKCS#8, PKCS#1, SEC1) or encrypted PKCS#8.
fn load_key(path: &Path, passphrase: Option<&str>) -> Result<PrivateKeyDer<'static>, BindError> {
    let bytes = read(path, "ssl.key")?;
    let text = String::from_utf8_lossy(&bytes);
    if let Some(start) = text.find(ENCRYPTED_BEGIN) {
        let Some(passphrase) = passphrase else {
            return Err(bind_error(
                format!(
                    "ssl.key {} is encrypted; give its passphrase (ssl.passphrase)",
                    path.display()
                ),
                None,
            ));
        };
        let block = text[start..]
            .find(ENCRYPTED_END)
            .map(|end| &text[start..start + end + ENCRYPTED_END.len()])
            .ok_or_else(|| {
                bind_error(
                    format!(
                        "ssl.key {} has no end line for its ENCRYPTED PRIVATE KEY",
                        path.display()
                    ),
                    None,
                )
            })?;
        return decrypt_pkcs8(block, passphrase).map_err(|(reason, source)| {
            bind_error(format!("ssl.key {}: {reason}", path.display()), source)
        });
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(bind_error(
            format!(
                "ssl.key {} is encrypted in OpenSSL's legacy PEM format (Proc-Type: 4,ENCRYPTED), \
                 which is not supported; convert it to encrypted PKCS#8 with \
                 `openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD.pem -out NEW.pem`",
                path.display()
            ),
            None,
        ));
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => format!(
                "ssl.key {} holds no private key (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY \
                 or ENCRYPTED PRIVATE KEY)",
                path.display()
            ),
            ref other => format!("ssl.key {} is not valid PEM: {other}", path.display()),
        };
        bind_error(reason, Some(Box::new(e)))
    })
}

type KeyError = (String, Option<BoxError>);

/// Decrypts one `ENCRYPTED PRIVATE KEY` PEM block (PKCS#8 with PBES2).
fn decrypt_pkcs8(block: &str, passphrase: &str) -> Result<PrivateKeyDer<'static>, KeyError> {
    use pkcs8::der::Document;
    use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};

    let (_, document) = Document::from_pem(block)
        .map_err(|e| (format!("not valid PEM: {e}"), Some(Box::new(e) as BoxError)))?;
    let info = EncryptedPrivateKeyInfo::try_from(document.as_bytes()).map_err(|e| {
        (
            format!("not an encrypted PKCS#8 key: {e}"),
            Some(Box::new(e) as BoxError),
        )
    })?;
    let wrong_passphrase = || {
        (
            "cannot decrypt the key: wrong passphrase (ssl.passphrase)".to_owned(),
            None,
        )
    };
    let secret = info.decrypt(passphrase).map_err(|e| match e {
        // A bad padding after decryption: the wrong key. pkcs5 0.7 reports it as
        // `EncryptFailed`, so both count.
        pkcs8::Error::EncryptedPrivateKey(
            pkcs8::pkcs5::Error::DecryptFailed | pkcs8::pkcs5::Error::EncryptFailed,
        ) => wrong_passphrase(),
        // The container parsed above, so a DER error here is the decrypted bytes: a
        // wrong passphrase that passed the padding check (about once in 256 tries).
        pkcs8::Error::Asn1(_) => wrong_passphrase(),
        other => (
            format!(
                "cannot decrypt the key ({other}); supported: PBES2 with PBKDF2 or scrypt \
                 and AES-CBC"
            ),
            Some(Box::new(other) as BoxError),
        ),
    })?;
    // Garbage that happens to be valid DER: only a key that parses counts as decrypted.
    if PrivateKeyInfo::try_from(secret.as_bytes()).is_err() {
        return Err(wrong_passphrase());
    }
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        secret.as_bytes().to_vec(),
    )))
}

fn connect_error(detail: String, source: Option<BoxError>) -> ConnectError {
    let error = ConnectError::new(ConnectErrorKind::Tls).with_detail(detail);
    match source {
        Some(source) => error.with_source(source),
        None => error,
    }
}

/// The consumer's TLS configuration: trusts the CA certificates in `ca` when given,
/// else the system's root certificates.
///
/// # Errors
/// A [`Tls`](ConnectErrorKind::Tls) error when the CA file cannot be used or the system
/// has no root certificates.
pub(crate) fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, ConnectError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = load_certs(path, "ca file").map_err(|e| match e {
                BindError::Tls { reason, source } => connect_error(reason, source),
                other => connect_error(other.to_string(), None),
            })?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    connect_error(
                        format!("ca file {}: {e}", path.display()),
                        Some(Box::new(e)),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(connect_error(
                    format!(
                        "no system root certificates found ({}); install the system's CA \
                         bundle (ca-certificates) or give a CA file (ca)",
                        if errors.is_empty() {
                            "none installed".to_owned()
                        } else {
                            errors.join("; ")
                        }
                    ),
                    None,
                ));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(crypto())
        .with_safe_default_protocol_versions()
        .map_err(|e| connect_error(format!("rustls: {e}"), Some(Box::new(e))))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The rustls error inside an I/O error, as tokio-rustls reports handshake failures.
pub(crate) fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A consumer's TLS handshake failure, with a hint when the provider is not speaking TLS.
pub(crate) fn handshake_error(error: &rustls::Error) -> ConnectError {
    let hint = match error {
        rustls::Error::InvalidMessage(_) => " (is the provider serving TLS on this port?)",
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            " (no CA this consumer trusts signed the provider's certificate; \
             give the CA's certificate file as `ca`)"
        }
        _ => "",
    };
    ConnectError::new(ConnectErrorKind::Tls)
        .with_detail(format!("{error}{hint}"))
        .with_source(error.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_file() {
        let ssl = SslOptions::new("/nonexistent/cert.pem", "/nonexistent/key.pem");
        let err = acceptor(&ssl).err().unwrap().to_string();
        assert!(
            err.contains("cannot read ssl.cert /nonexistent/cert.pem"),
            "{err}"
        );
        let err = acceptor(&SslOptions::default()).err().unwrap().to_string();
        assert!(err.contains("both `cert` and `key`"), "{err}");
        let err = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert_eq!(err.kind(), ConnectErrorKind::Tls);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
