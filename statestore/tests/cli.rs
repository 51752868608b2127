//! `terway-ledger` on ledgers built by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use terway_statestore::*;

fn build(dir: &Path) {
    let l = Ledger::open(dir).unwrap();
    let eni = EniRecord {
        id: "eni-cli".into(),
        mac: "00:16:3e:aa:bb:cc".into(),
        vswitch_id: "vsw-cli".into(),
        gateway: "10.1.0.253".parse().unwrap(),
        cidr: "10.1.0.0/24".into(),
        primary_ip: "10.1.0.1".parse().unwrap(),
        status: EniStatus::InUse,
        route_table: 1001,
        created_by_us: true,
        owner: None,
        exclusive: false,
        ipv6: None,
    };
    l.adopt_eni(eni, Durability::Flush).unwrap();
    let ips: Vec<IpAddr> = (2..=5).map(|i| IpAddr::from([10, 1, 0, i])).collect();
    l.adopt_ips("eni-cli", &ips, Durability::Flush).unwrap();
    for name in ["web", "db"] {
        let req = BindRequest {
            pod: PodRef::new("shop", name, "u"),
            container_id: format!("container-{name}"),
            netns: format!("/var/run/netns/{name}"),
            ifname: "eth0".into(),
            settings: PodNetworkSettings::default(),
            ipv6: false,
        };
        l.bind(&req, EniPreference::MostUsed, Durability::Flush).unwrap();
    }
    l.release(
        &PodRef::new("shop", "db", "u"),
        None,
        Duration::from_secs(600),
        Durability::Flush,
    )
    .unwrap();
    l.record_intent(
        IntentKind::AssignIps {
            eni_id: "eni-cli".into(),
            count: 3,
            ipv6: false,
        },
        Some("token-1".into()),
    )
    .unwrap();
}

fn ledger_tool(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_terway-ledger"))
        .arg("--path")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ledger_tool(dir, &all);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn every_subcommand_human_and_json() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());

    let (code, out, _) = ledger_tool(dir.path(), &["summary"]);
    assert_eq!(code, 0);
    assert!(out.contains("eni-cli") && out.contains("IDLE"), "{out}");
    assert!(out.contains("total: 2 idle, 1 bound, 1 cooling"), "{out}");
    let v = json(dir.path(), &["summary"]);
    assert_eq!(v["enis"]["eni-cli"]["bound"], 1);
    assert_eq!(v["totals"]["intents"], 1);

    let (_, out, _) = ledger_tool(dir.path(), &["pods"]);
    assert!(out.contains("shop/web") && !out.contains("shop/db"), "{out}");
    assert_eq!(json(dir.path(), &["pods"]).as_array().unwrap().len(), 1);

    let (_, out, _) = ledger_tool(dir.path(), &["ips"]);
    assert!(
        out.contains("cooling") && out.contains("bound") && out.contains("shop/web"),
        "{out}"
    );
    assert_eq!(json(dir.path(), &["ips"]).as_array().unwrap().len(), 4);

    let (_, out, _) = ledger_tool(dir.path(), &["enis"]);
    assert!(out.contains("00:16:3e:aa:bb:cc") && out.contains("1001"), "{out}");
    assert_eq!(json(dir.path(), &["enis"])[0]["route_table"], 1001);

    let (_, out, _) = ledger_tool(dir.path(), &["intents"]);
    assert!(out.contains("assign_ips") && out.contains("token-1"), "{out}");
    assert_eq!(json(dir.path(), &["intents"])[0]["kind"], "assign_ips");

    let (code, out, _) = ledger_tool(dir.path(), &["check"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("consistent"));
    assert_eq!(json(dir.path(), &["check"])["consistent"], true);

    let export = json(dir.path(), &["export"]);
    assert_eq!(export["export_version"], 1);
    assert_eq!(export["meta"]["schema_version"], SCHEMA_VERSION);
    let parsed: Export = serde_json::from_value(export).unwrap();
    assert_eq!(
        (
            parsed.enis.len(),
            parsed.ips.len(),
            parsed.pods.len(),
            parsed.intents.len()
        ),
        (1, 4, 1, 1)
    );

    let (code, out, _) = ledger_tool(dir.path(), &["repair"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to repair"));
}

#[test]
fn check_fails_and_repair_fixes() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("pods").unwrap().remove("shop/web").unwrap();
        db.flush().unwrap();
    }
    let (code, out, _) = ledger_tool(dir.path(), &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ips/10.1.0.") && out.contains("shop/web"),
        "names the broken record: {out}"
    );
    let v: serde_json::Value = serde_json::from_str(&ledger_tool(dir.path(), &["check", "--json"]).1).unwrap();
    assert_eq!(v["consistent"], false);
    let v = json(dir.path(), &["repair"]);
    assert_eq!(v["moved"].as_array().unwrap().len(), 1);
    assert_eq!(ledger_tool(dir.path(), &["check"]).0, 0);
    let export = json(dir.path(), &["export"]);
    assert_eq!(
        export["quarantine"]["ips"].as_object().unwrap().len(),
        1,
        "kept aside, not deleted"
    );
}

#[test]
fn a_ledger_held_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let held = Ledger::open(dir.path()).unwrap();
    let (code, _, err) = ledger_tool(dir.path(), &["summary"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("held by another process") && err.contains("--snapshot"),
        "{err}"
    );
    // the snapshot reads a copy, and the live ledger is untouched
    let v = json(dir.path(), &["summary", "--snapshot"]);
    assert_eq!(v["totals"]["bound"], 1);
    let (code, _, err) = ledger_tool(dir.path(), &["repair", "--snapshot"]);
    assert_eq!(code, 2, "repair never works on a copy");
    assert!(err.contains("terwayd stopped"), "{err}");
    assert!(held.check().is_empty());
    drop(held);
    assert_eq!(ledger_tool(dir.path(), &["check"]).0, 0);
}

#[test]
fn missing_or_newer_ledgers_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = ledger_tool(&dir.path().join("absent"), &["summary"]);
    assert_eq!(code, 2);
    assert!(err.contains("no ledger at"), "{err}");
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", "7").unwrap();
        db.open_tree("ips").unwrap().insert("x", "y").unwrap();
        db.flush().unwrap();
    }
    let (code, _, err) = ledger_tool(dir.path(), &["summary"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("schema version 7") && err.contains(&format!("up to version {SCHEMA_VERSION}")),
        "{err}"
    );
}
