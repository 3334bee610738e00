//! Sets `cfg(external_valkey)` when `VALKEY_URL` names an external server, so tests that must
//! restart their server are ignored (with the reason) instead of failing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(external_valkey)");
    println!("cargo::rerun-if-env-changed=VALKEY_URL");
    if std::env::var("VALKEY_URL").is_ok_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=external_valkey");
    }
}
