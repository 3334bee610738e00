//! Sets `cfg(external_postgres)` when `DATABASE_URL` names an external server, so tests that
//! must restart their server are ignored (with the reason) instead of failing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(external_postgres)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    if std::env::var("DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=external_postgres");
    }
}
