//! terwayd and terway-cli as built: what they print without a daemon. Having
//! an integration test here also makes `cargo test --workspace` build them,
//! so the end-to-end tests find them fresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn terwayd_prints_the_conflist_it_installs() {
    let out = Command::new(env!("CARGO_BIN_EXE_terwayd"))
        .args(["config", "conflist", "--socket", "/run/x/eni.socket", "--mtu", "9000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let conflist: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["type"], "terway");
    assert_eq!(plugin["socket"], "/run/x/eni.socket");
}

#[test]
fn terway_cli_names_its_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_terway-cli"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["status", "pods", "enis", "vswitches", "max-pods"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}
