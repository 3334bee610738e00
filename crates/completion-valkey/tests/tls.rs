//! TLS (feature `tls`): a Redis server with a certificate signed by a throwaway CA; the
//! backend connects over `rediss://` trusting that CA through `tls_ca_file`, and refuses the
//! server when it does not trust it. Needs the `openssl` command to make the certificates
//! and a `redis-server` built with TLS (Debian's is).
#![cfg(feature = "tls")]

mod common;

use std::path::Path;
use std::process::Command;

use completion_conformance::support::{collect_in, create_and_complete, namespace};
use completion_core::{CompletionBackend, EngineError, Tags};
use completion_testserver::{ValkeyFlavor, ValkeyOptions};
use completion_valkey::{ValkeyBackend, ValkeyConfig};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl (needed to make test certificates): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate for 127.0.0.1 signed by it.
fn certificates(dir: &Path) {
    let ca = "-subj /CN=completion-valkey-test-CA -keyout ca.key -out ca.crt";
    let mut args = vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"];
    args.extend(ca.split(' '));
    openssl(dir, &args);
    let csr = "-subj /CN=127.0.0.1 -keyout server.key -out server.csr";
    let mut args = vec!["req", "-newkey", "rsa:2048", "-nodes"];
    args.extend(csr.split(' '));
    openssl(dir, &args);
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let sign =
        "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt";
    openssl(dir, &sign.split(' ').collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_over_tls_with_a_trusted_ca_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    // A free port for TLS (the plain port stays for the test server's readiness probe).
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let options = ValkeyOptions::default()
        .flavor(ValkeyFlavor::Redis)
        .persistence(false)
        .config("tls-port", tls_port.to_string())
        .config("tls-cert-file", file("server.crt"))
        .config("tls-key-file", file("server.key"))
        .config("tls-ca-cert-file", file("ca.crt"))
        .config("tls-auth-clients", "no");
    let server = common::dedicated_server(options).await;
    let url = format!("rediss://127.0.0.1:{tls_port}");

    let config = ValkeyConfig::new(url.clone()).with_key_prefix(common::unique_prefix("tls"));
    let backend = ValkeyBackend::connect(config.clone().with_tls_ca_file(file("ca.crt")))
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}"));
    let ns = namespace("tls");
    let mut stream = backend.subscribe_completions().await.unwrap();
    let id = create_and_complete(&backend, &ns, &Tags::new()).await;
    let got = collect_in(&mut stream, &ns, 1).await;
    assert_eq!(got[0].execution_id(), &id, "delivered over TLS");
    let valkeys = ValkeyConfig::new(url.replace("rediss://", "valkeys://"))
        .with_key_prefix(common::unique_prefix("tls"))
        .with_tls_ca_file(file("ca.crt"));
    ValkeyBackend::connect(valkeys).await.unwrap_or_else(|e| panic!("valkeys:// is rediss://: {e}"));

    match ValkeyBackend::connect(config).await {
        Err(EngineError::Transport { .. } | EngineError::Timeout { .. }) => {}
        other => panic!("a server signed by an unknown CA must be refused, got {:?}", other.map(|_| ())),
    }
    match ValkeyBackend::connect(ValkeyConfig::new(url).with_tls_ca_file(file("missing.pem"))).await {
        Err(e @ EngineError::InvalidInput { .. }) => assert!(e.to_string().contains("missing.pem"), "{e}"),
        other => panic!("a missing CA file must be named, got {:?}", other.map(|_| ())),
    }
    drop(server);
}
