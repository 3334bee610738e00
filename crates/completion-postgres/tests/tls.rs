//! TLS (feature `tls`): a server with a certificate signed by a throwaway CA; the backend
//! connects with `sslmode=require`, trusting that CA through `tls_ca_file`, and refuses the
//! server when it does not trust it. Needs the `openssl` command to make the certificates.
#![cfg(feature = "tls")]

mod common;

use std::path::Path;
use std::process::Command;

use completion_conformance::support::{collect_in, create_and_complete, namespace};
use completion_core::{CompletionBackend, EngineError, Tags};
use completion_postgres::{PostgresBackend, PostgresConfig};
use completion_testserver::{PostgresOptions, PostgresServer};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl (needed to make test certificates): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate for 127.0.0.1 signed by it, readable by the server.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=completion test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
    // The server runs as `postgres` when the tests run as root: it must own its key (0600).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("server.crt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1) == 0 {
        let status = Command::new("chown").arg("postgres").arg(dir.join("server.key")).status().unwrap();
        assert!(status.success(), "chown postgres server.key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_with_a_trusted_ca_and_refuses_an_unknown_one() {
    // Every step below has its own limit but the admin session; a stuck run fails here,
    // naming the test, instead of holding up the whole suite.
    tokio::time::timeout(std::time::Duration::from_secs(180), over_tls())
        .await
        .expect("the TLS test did not finish within 180 s");
}

async fn over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let options = PostgresOptions::default()
        .setting("ssl", "on")
        .setting("ssl_cert_file", cert.display().to_string())
        .setting("ssl_key_file", key.display().to_string());
    let server =
        tokio::task::spawn_blocking(move || PostgresServer::start(options)).await.unwrap().expect("TLS server");
    let url = format!("{}?sslmode=require", server.url());

    let config = PostgresConfig::from_url(url.clone())
        .with_schema(common::unique_schema("tls"))
        .with_tls_ca_file(dir.path().join("ca.crt"));
    let backend = PostgresBackend::connect(config).await.unwrap_or_else(|e| panic!("TLS connect: {e}"));
    let ns = namespace("tls");
    let mut stream = backend.subscribe_completions().await.expect("subscribe over TLS");
    let id = create_and_complete(&backend, &ns, &Tags::new()).await;
    assert_eq!(collect_in(&mut stream, &ns, 1).await[0].execution_id(), &id);

    let admin = common::admin(&server.url()).await;
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name IN ($1, $2)",
            &[&backend.listener_application_name(), &backend.pool_application_name()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 2, "the listener and a pooled connection use TLS ({encrypted})");

    // Without the CA (system roots only), the server's certificate is refused.
    let untrusted = PostgresConfig::from_url(url).with_schema(common::unique_schema("tls"));
    let err = PostgresBackend::connect(untrusted).await.err().expect("an unknown CA must be refused");
    assert!(matches!(err, EngineError::Transport { .. }), "{err}");
}
