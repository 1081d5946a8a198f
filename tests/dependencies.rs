//! The crate split holds: the engine (`qwenrt`) embeds without a web stack, an async runtime,
//! an archive reader or an HTTP client, and the server (`qwenrt-server`) without the command
//! line's. Read from `cargo tree -e normal` (dev-dependencies excluded; offline, so only the crates
//! the build already fetched: those of this platform).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The normal dependencies of `package` (itself included), by crate name.
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(&cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", package])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} tree: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {stderr}"
    );
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    // the tree was read: the package itself is its first line
    assert!(
        names.contains(package),
        "cargo tree -p {package} did not list {package}: {names:?}"
    );
    names
}

/// Which of `banned` are among `package`'s normal dependencies.
fn present(package: &str, banned: &[&str]) -> Vec<String> {
    let names = normal_dependencies(package);
    banned
        .iter()
        .filter(|b| names.contains(**b))
        .map(|b| b.to_string())
        .collect()
}

#[test]
fn the_engine_has_no_web_stack_runtime_archive_or_http_client() {
    let names = normal_dependencies("qwenrt");
    // what it does need is there (the listing is the real tree, not an empty one)
    for needed in ["qwenrt-kernels", "tokenizers", "llguidance"] {
        assert!(
            names.contains(needed),
            "qwenrt no longer depends on {needed}: {names:?}"
        );
    }
    let found = present(
        "qwenrt",
        &["tokio", "axum", "hyper", "zip", "ureq", "clap", "indicatif"],
    );
    assert!(
        found.is_empty(),
        "the qwenrt library depends on {found:?} (cargo tree -p qwenrt -e normal -i NAME shows \
         the path); these belong to qwenrt-server or qwenrt-cli"
    );
}

#[test]
fn the_server_has_none_of_the_command_lines_dependencies() {
    let found = present(
        "qwenrt-server",
        &["zip", "ureq", "clap", "indicatif", "qwenrt-cli"],
    );
    assert!(
        found.is_empty(),
        "qwenrt-server depends on {found:?} (cargo tree -p qwenrt-server -e normal -i NAME shows \
         the path); these belong to qwenrt-cli"
    );
}

#[test]
fn the_embedding_example_uses_the_engine_alone() {
    // the root package's dev-dependencies would let examples/embed.rs reach the other crates
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/embed.rs");
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        src.contains("use qwenrt::"),
        "{} does not use qwenrt",
        path.display()
    );
    for other in ["qwenrt_cli", "qwenrt_server"] {
        assert!(
            !src.contains(other),
            "{} uses {other}: the example builds against the qwenrt crate alone",
            path.display()
        );
    }
}
