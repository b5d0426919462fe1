//! Certificates made at test time (rcgen): a CA, a certificate it signed, its key plain and
//! encrypted, and files that must be refused.

use network_cluster::transport::SslOptions;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::PathBuf;

pub const PASSPHRASE: &str = "correct horse battery staple";

/// A CA, a certificate it signed for `localhost` and `127.0.0.1`, the certificate's key
/// both plain and encrypted, and a second CA that signed nothing here; all PEM files in a
/// directory removed on drop.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_cert, ca_key) = ca("network-cluster test CA");
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let elsewhere = CertificateParams::new(vec!["elsewhere.example".to_owned()])
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
        let (other_ca, _) = ca("some other CA");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other_ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("elsewhere-cert.pem"), elsewhere.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(
            dir.join("key-encrypted.pem"),
            encrypt(&key.serialize_der(), PASSPHRASE),
        )
        .unwrap();
        // A key that belongs to no certificate here.
        std::fs::write(
            dir.join("stranger-key.pem"),
            KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn plain(&self) -> SslOptions {
        SslOptions::new(self.path("cert.pem"), self.path("key.pem"))
    }

    pub fn encrypted(&self) -> SslOptions {
        SslOptions::new(self.path("cert.pem"), self.path("key-encrypted.pem"))
            .passphrase(PASSPHRASE)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

/// A PKCS#8 key encrypted as `openssl pkcs8 -topk8 -v2 aes-256-cbc` does (PBES2, PBKDF2
/// with HMAC-SHA256, AES-256-CBC), with few iterations to keep the test fast.
fn encrypt(pkcs8_der: &[u8], passphrase: &str) -> String {
    use pkcs8::der::pem::LineEnding;
    use pkcs8::pkcs5::pbes2;
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8_der).unwrap();
    let params =
        pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"salt-for-a-test", &[7; 16]).unwrap();
    let encrypted = info.encrypt_with_params(params, passphrase).unwrap();
    encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .unwrap()
        .to_string()
}
