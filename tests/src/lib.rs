//! What the end-to-end tests and benchmarks share: the paths of the
//! binaries under test, and a Kubernetes API server to run in a test.

pub mod kube_api;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of one of terway-node's binaries (`terwayd`, `terway`,
/// `terway-cli`), built once per test process with the profile the tests
/// were built with, so a test never runs a stale binary.
///
/// # Panics
/// When the build fails: the test cannot run without the binary.
#[allow(clippy::expect_used)]
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test> → target/<profile>
        let exe = std::env::current_exe().expect("the test's own path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("tests run from target/<profile>/deps")
            .to_path_buf();
        let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "terway-node", "--bins"]);
        if profile != "debug" {
            build.args(["--profile", if profile == "release" { "release" } else { &profile }]);
        }
        let status = build.status().expect("running cargo build for terway-node's binaries");
        assert!(status.success(), "cargo build -p terway-node --bins failed");
        dir
    });
    dir.join(name)
}
