//! The rustls client configuration every server backend uses for TLS (feature `rustls`):
//! the ring provider, the system's root certificates plus an optional PEM file of CA
//! certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::EngineError;

/// A rustls client configuration trusting the system's roots and the certificates of
/// `ca_file`. A bad or empty `ca_file` is [`EngineError::InvalidInput`] naming
/// `tls_ca_file` and the path; system roots that do not parse are skipped (logged at debug).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, EngineError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let refused = |e: &dyn std::fmt::Display| EngineError::invalid("tls_ca_file", &shown, e.to_string());
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| refused(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(&e))?;
        if certs.is_empty() {
            return Err(EngineError::invalid("tls_ca_file", &shown, "holds no PEM certificate"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| refused(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::invalid("tls", "rustls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_refused_naming_it() {
        let missing = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err().to_string();
        assert!(missing.contains("tls_ca_file") && missing.contains("/nonexistent/ca.pem"), "{missing}");
        let empty = std::env::temp_dir().join(format!("completion-core-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let error = client_config(Some(&empty)).unwrap_err().to_string();
        std::fs::remove_file(&empty).unwrap();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        assert!(client_config(None).is_ok());
    }
}
