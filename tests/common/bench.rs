//! Running the `ringkv-bench` binary from the root package's tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::Server;

/// The `ringkv-bench` binary, built now with the profile and target directory of this test.
///
/// The bench is another package of the workspace, so Cargo does not build it for this package's
/// tests nor tell us its path (`CARGO_BIN_EXE_*` covers this package's binaries only). The test
/// executable lives in `<target>/<profile>/deps/`, so the binary goes to `<target>/<profile>/`.
///
/// It is built as `cargo build --workspace --tests --bins` builds it: with every test selected,
/// Cargo turns on the features the workspace's dev-dependencies ask of shared crates, so this
/// build is the one `cargo test --workspace` (and CI's chaos step) already made, and costs
/// nothing. Built alone, the bench would see other features, and every crate of the workspace
/// would be compiled a second time.
///
/// The variables Cargo sets for this test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...) are not
/// passed on: build scripts read some of them (ring's does) and Cargo reruns a build script when
/// a variable it read changes, so with them the build would start again from ring up, and so
/// would the next build without them.
pub fn bench_binary() -> PathBuf {
    let test_executable = std::env::current_exe().expect("the test executable's path");
    let profile_directory =
        test_executable.parent().and_then(Path::parent).expect("<target>/<profile>/deps/test");
    let target_directory = profile_directory.parent().expect("<target>/<profile>");
    let mut build = Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_tests) {
            build.env_remove(name);
        }
    }
    build
        .args(["build", "--quiet", "--workspace", "--tests", "--bins", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_directory);
    if profile_directory.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build --workspace --tests --bins");
    assert!(status.success(), "cargo build --workspace --tests --bins failed: {status}");
    profile_directory.join("ringkv-bench")
}

/// Whether `name` is one of the variables Cargo sets for a test executable (not one a user sets
/// to configure Cargo, such as `CARGO_TARGET_DIR` or `CARGO_PROFILE_*`).
fn set_by_cargo_for_tests(name: &str) -> bool {
    const PREFIXES: [&str; 4] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_", "CARGO_BIN_"];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || matches!(
            name,
            "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR" | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// Runs the bench with `args`, whatever its exit status.
pub fn bench(binary: &Path, args: &[&str]) -> Output {
    Command::new(binary).args(args).output().expect("running ringkv-bench")
}

/// Runs the bench with `args`; its standard output, after checking it exited successfully
/// (otherwise fails with its output and `server`'s log).
pub fn bench_succeeds(binary: &Path, args: &[&str], server: &Server) -> String {
    let output = bench(binary, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "ringkv-bench {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    stdout
}
