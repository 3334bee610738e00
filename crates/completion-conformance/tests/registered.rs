//! The suite's test list is kept twice: as the `pub async fn`s of `src/tests/` and as the
//! names `suite!` registers (`src/lib.rs`). A function missing from `suite!` would never
//! run on any backend, and a name without a function breaks every backend's build; this
//! test fails on either, naming the function.

use std::collections::BTreeSet;

const LIB: &str = include_str!("../src/lib.rs");

/// Every source file of `src/tests/`, concatenated: the suite's test functions.
fn suite_source() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() > 3, "found only {files:?} in {}", dir.display());
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display())))
        .collect()
}

/// The names of the `pub async fn`s of `source` (the conformance tests).
fn test_functions(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| line.strip_prefix("pub async fn "))
        .map(|rest| rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_string())
        .collect()
}

/// The names every `$crate::suite!(@tests $harness; [attributes]; names...)` call of
/// `source` registers.
fn registered(source: &str) -> Vec<String> {
    const CALL: &str = "$crate::suite!(@tests $harness;";
    let mut names = Vec::new();
    for (at, _) in source.match_indices(CALL) {
        let call = &source[at + CALL.len()..];
        let call = &call[..call.find(");").unwrap_or(call.len())];
        // `[attributes]; names`: the attribute list holds no `;`.
        let list = call.split_once(';').map_or("", |(_, names)| names);
        // The macro's own recursion (`$($rest)*`) registers nothing of its own.
        if !list.contains('$') {
            names.extend(list.split_whitespace().map(str::to_string));
        }
    }
    names
}

/// Every name of `names` that `others` lacks, in order.
fn missing<'a>(names: &'a [String], others: &[String]) -> Vec<&'a str> {
    names.iter().filter(|name| !others.contains(name)).map(String::as_str).collect()
}

#[test]
fn every_test_function_is_registered_in_suite_and_nothing_else() {
    let functions = test_functions(&suite_source());
    let names = registered(LIB);
    assert!(functions.len() > 10, "found only {functions:?} in src/tests/");
    assert!(names.len() > 10, "found only {names:?} in suite! of src/lib.rs");
    let unregistered = missing(&functions, &names);
    assert!(
        unregistered.is_empty(),
        "pub async fn {} of src/tests/ never runs: add it to a list of suite! in src/lib.rs",
        unregistered.join(", ")
    );
    let unknown = missing(&names, &functions);
    assert!(
        unknown.is_empty(),
        "suite! in src/lib.rs registers {}, which src/tests/ does not define as a pub async fn",
        unknown.join(", ")
    );
    let mut seen = BTreeSet::new();
    let twice: Vec<&str> = names.iter().filter(|name| !seen.insert(name.as_str())).map(String::as_str).collect();
    assert!(twice.is_empty(), "suite! in src/lib.rs registers {} twice", twice.join(", "));
}

#[test]
fn the_check_names_what_is_missing() {
    let tests = "pub async fn listed(harness: &dyn Harness) {}\npub async fn forgotten(h: &dyn Harness) {}\n\
                 async fn helper() {}\n";
    let lib = "$crate::suite!(@tests $harness; [];\n    listed ghost\n);\n\
               $crate::suite!(@tests $harness; [$($(#[$kill])*)?]; other);\n\
               $crate::suite!(@tests $harness; $attrs; $($rest)*);";
    let (functions, names) = (test_functions(tests), registered(lib));
    assert_eq!(functions, ["listed", "forgotten"]);
    assert_eq!(names, ["listed", "ghost", "other"]);
    assert_eq!(missing(&functions, &names), ["forgotten"]);
    assert_eq!(missing(&names, &functions), ["ghost", "other"]);
}

/// `docs/delivery.md` is the one home of the promise -> test table: every test of the suite
/// must appear in it, so the table cannot fall behind the suite.
#[test]
fn every_test_function_is_in_the_promise_table_of_docs_delivery_md() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/delivery.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let table = &doc[doc.find("## Which conformance test proves what").expect("the table's heading")..];
    let absent: Vec<String> =
        test_functions(&suite_source()).into_iter().filter(|name| !table.contains(&format!("`{name}`"))).collect();
    assert!(absent.is_empty(), "docs/delivery.md's promise table does not name {}", absent.join(", "));
}
