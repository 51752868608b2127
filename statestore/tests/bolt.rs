//! The bbolt reader against files the real bbolt wrote
//! (fixtures/bolt/gen_resrelation.go: upstream Terway's ResRelation.db).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use terway_statestore::bolt::{BoltError, BoltFile};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bolt")
        .join(name)
}

fn pod_ip(value: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap();
    v["Resources"][0]["ipv4"].as_str().unwrap().to_owned()
}

#[test]
fn a_small_inline_bucket_is_read() {
    let db = BoltFile::open(&fixture("resrelation-small.db")).unwrap();
    let entries = db.bucket(b"relation").unwrap().expect("the bucket");
    let keys: Vec<String> = entries
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    assert_eq!(keys, ["default/dual-0", "default/web-0", "kube-system/coredns-7d8f"]);
    let dual: serde_json::Value = serde_json::from_slice(&entries[0].1).unwrap();
    assert_eq!(dual["Resources"][0]["ipv6"], "2408:4005:3de:10::102");
    assert_eq!(dual["PodInfo"]["Namespace"], "default");
    assert!(db.bucket(b"no-such-bucket").unwrap().is_none());
}

#[test]
fn a_bucket_over_many_pages_with_an_overflowing_value_is_read() {
    let db = BoltFile::open(&fixture("resrelation-large.db")).unwrap();
    let entries = db.bucket(b"relation").unwrap().expect("the bucket");
    // 60 written, one deleted in a later transaction
    assert_eq!(entries.len(), 59);
    let keys: Vec<String> = entries
        .iter()
        .map(|(k, _)| String::from_utf8(k.clone()).unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "key order");
    assert!(!keys.contains(&"load/pod-003".to_owned()));
    let big = entries.iter().find(|(k, _)| k == b"load/pod-037").unwrap();
    assert!(big.1.len() > 9000, "the value over two pages is whole");
    assert_eq!(pod_ip(&big.1), "192.168.16.47");
    for (k, v) in &entries {
        let i: usize = String::from_utf8(k.clone()).unwrap()["load/pod-".len()..]
            .parse()
            .unwrap();
        assert_eq!(pod_ip(v), format!("192.168.16.{}", 10 + i));
    }
}

#[test]
fn a_file_that_is_not_bbolt_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ResRelation.db");
    std::fs::write(&path, vec![7u8; 8192]).unwrap();
    let err = BoltFile::open(&path).unwrap_err();
    assert!(matches!(err, BoltError::Corrupt { .. }));
    assert!(err.to_string().contains("ResRelation.db"), "{err}");
    // a truncated copy of a real file: the torn part is reported, not read past
    let whole = std::fs::read(fixture("resrelation-large.db")).unwrap();
    std::fs::write(&path, &whole[..3 * 4096]).unwrap();
    match BoltFile::open(&path) {
        Ok(db) => assert!(db.bucket(b"relation").is_err()),
        Err(e) => assert!(matches!(e, BoltError::Corrupt { .. }), "{e}"),
    }
    assert!(matches!(
        BoltFile::open(&dir.path().join("missing.db")),
        Err(BoltError::Io { .. })
    ));
}
