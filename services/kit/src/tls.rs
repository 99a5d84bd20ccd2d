//! TLS on the gRPC and REST listeners: a PEM certificate chain and key read at start (a bad
//! file fails the start, naming it, rather than the first handshake), served by rustls with
//! the ring provider (the workspace's one crypto provider). The admin listener stays
//! plaintext: probes and scrapers reach it inside the pod's network.

use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A rustls server configuration for `cert` and `key`, offering HTTP/2 and HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(&read("certificate", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate {}: not PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate {}: no CERTIFICATE block",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&read("key", key)?)
        .map_err(|e| format!("key {}: no PEM private key: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            format!(
                "certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// tonic's identity for `cert` and `key`, checked the same way first.
pub fn grpc_identity(cert: &Path, key: &Path) -> Result<tonic::transport::Identity, String> {
    server_config(cert, key)?;
    Ok(tonic::transport::Identity::from_pem(
        read("certificate", cert)?,
        read("key", key)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_mismatched_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = server_config(&missing, &missing).expect_err("missing");
        assert!(err.contains("missing.pem"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").expect("write");
        let err = server_config(&garbage, &garbage).expect_err("garbage");
        assert!(err.contains("no CERTIFICATE block"), "{err}");
    }
}
