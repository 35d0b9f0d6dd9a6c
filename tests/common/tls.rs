//! Certificates for TLS tests, made fresh by each test: a CA, node certificates it signs, and
//! a second, unrelated CA whose certificates nothing trusts.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority: its certificate (PEM on disk) and what signs with it.
pub struct Authority {
    pub cert_file: PathBuf,
    certificate: Certificate,
    key: KeyPair,
}

/// A node's certificate and key on disk, and the CA file to verify the others with.
pub struct Identity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

impl Authority {
    /// A new CA named `name`, its certificate written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let cert_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, certificate.pem()).unwrap();
        Authority { cert_file, certificate, key }
    }

    /// A certificate for 127.0.0.1 and localhost, for both the server and the client side of a
    /// connection, written to `dir/<name>.pem` and `dir/<name>-key.pem`.
    pub fn issue(&self, dir: &Path, name: &str) -> Identity {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.certificate, &self.key).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        let key_file = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, certificate.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Identity { cert_file, key_file, ca_file: self.cert_file.clone() }
    }
}

impl Identity {
    /// The `ringkv serve` flags that turn TLS on with this identity.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--tls-cert-file".to_string(),
            self.cert_file.display().to_string(),
            "--tls-key-file".to_string(),
            self.key_file.display().to_string(),
            "--tls-ca-file".to_string(),
            self.ca_file.display().to_string(),
        ]
    }
}
