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

/// Bytes changed anywhere in a real file: the reader answers or refuses,
/// never panics (terwayd reads the file before serving).
#[test]
fn damaged_files_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ResRelation.db");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    for (name, rounds) in [("resrelation-small.db", 600), ("resrelation-large.db", 150)] {
        let whole = std::fs::read(fixture(name)).unwrap();
        // the first pages hold the metas and the trees: damage lands there most
        let hot = whole.len().min(8 * 4096);
        for _ in 0..rounds {
            let mut bytes = whole.clone();
            for _ in 0..1 + next() % 8 {
                let at = if next() % 4 == 0 {
                    next() % whole.len()
                } else {
                    next() % hot
                };
                bytes[at] = next() as u8;
            }
            std::fs::write(&path, &bytes).unwrap();
            if let Ok(db) = BoltFile::open(&path) {
                let _ = db.bucket(b"relation");
            }
        }
    }
}

/// A branch page whose two children are one page: refused (each page of a
/// sound tree is reached once; a corrupt tree could repeat without end).
#[test]
fn a_tree_that_reaches_a_page_twice_is_refused() {
    let mut bytes = std::fs::read(fixture("resrelation-small.db")).unwrap();
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    // the newer of the two meta pages names the root (meta: 16 bytes in; root at +16, txid at +48)
    let meta = [0, 4096]
        .into_iter()
        .max_by_key(|m| u64_at(&bytes, m + 16 + 48))
        .unwrap();
    let root = u64_at(&bytes, meta + 32) as usize;
    // the root's leaf copied to a free page; the root becomes a branch to it, twice
    let (leaf, free) = (root * 4096, 7 * 4096);
    assert!(bytes[free..free + 4096].iter().all(|b| *b == 0), "page 7 is free");
    let copy = bytes[leaf..leaf + 4096].to_vec();
    bytes[free..free + 4096].copy_from_slice(&copy);
    bytes[leaf + 8..leaf + 10].copy_from_slice(&1u16.to_le_bytes()); // a branch page
    bytes[leaf + 10..leaf + 12].copy_from_slice(&2u16.to_le_bytes()); // of two elements
    for i in 0..2 {
        let at = leaf + 16 + 16 * i;
        bytes[at..at + 8].fill(0); // pos, ksize
        bytes[at + 8..at + 16].copy_from_slice(&7u64.to_le_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ResRelation.db");
    std::fs::write(&path, &bytes).unwrap();
    let err = BoltFile::open(&path).unwrap().bucket(b"relation").unwrap_err();
    assert!(err.to_string().contains("reached twice"), "{err}");
}
