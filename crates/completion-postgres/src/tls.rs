//! The TLS connector: rustls with the feature `tls`, none without.
//!
//! With `tls`, whether TLS is used follows the server address's `sslmode` (`prefer` by
//! default in tokio-postgres, `require` to insist); certificates are checked against the
//! system's root store plus [`tls_ca_file`](crate::PostgresConfig::tls_ca_file). Without it,
//! `sslmode=require` fails at connect with tokio-postgres's "no TLS implementation" error.

use completion_core::EngineError;

use crate::PostgresConfig;

#[cfg(not(feature = "tls"))]
pub(crate) type Tls = tokio_postgres::NoTls;

#[cfg(feature = "tls")]
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// The stream type of a connection made with [`Tls`].
pub(crate) type TlsStream = <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

#[cfg(not(feature = "tls"))]
pub(crate) fn connector(_config: &PostgresConfig) -> Result<Tls, EngineError> {
    Ok(tokio_postgres::NoTls)
}

#[cfg(feature = "tls")]
pub(crate) fn connector(config: &PostgresConfig) -> Result<Tls, EngineError> {
    use std::sync::Arc;

    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system root certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &config.tls_ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;

        let shown = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| EngineError::invalid("tls_ca_file", &shown, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::invalid("tls_ca_file", &shown, e.to_string()))?;
        if certs.is_empty() {
            return Err(EngineError::invalid("tls_ca_file", &shown, "holds no PEM certificate"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| EngineError::invalid("tls_ca_file", &shown, e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EngineError::invalid("tls", "rustls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

/// Another handle on the connector (a copy of `NoTls`, a shared rustls configuration).
#[allow(clippy::clone_on_copy)] // `NoTls` is `Copy`, the rustls connector is not
pub(crate) fn share(tls: &Tls) -> Tls {
    tls.clone()
}
