//! The ledger's operations, opening rules, consistency check and repair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::eni;
use std::net::IpAddr;
use std::time::Duration;
use terway_statestore::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn req(name: &str, container: &str) -> BindRequest {
    BindRequest {
        pod: PodRef::new("default", name, &format!("uid-{name}")),
        container_id: container.into(),
        netns: format!("/var/run/netns/{container}"),
        ifname: "eth0".into(),
        settings: PodNetworkSettings::default(),
        ipv6: false,
    }
}

fn ledger_with_pool(dir: &std::path::Path) -> Ledger {
    let l = Ledger::open(dir).unwrap();
    l.adopt_eni(eni("eni-a", 1), Durability::Flush).unwrap();
    l.adopt_ips(
        "eni-a",
        &[ip("10.0.1.2"), ip("10.0.1.3"), ip("10.0.1.4")],
        Durability::Flush,
    )
    .unwrap();
    l
}

#[test]
fn bind_is_idempotent_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    let a = l
        .bind(&req("a", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert!(!a.existing);
    let again = l
        .bind(&req("a", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_eq!(
        (again.ip, again.existing),
        (a.ip, true),
        "a repeated ADD gets the same address"
    );
    let b = l
        .bind(&req("b", "c2"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_ne!(a.ip, b.ip);
    drop(l);

    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(
        l.bind(&req("a", "c1"), EniPreference::MostUsed, Durability::Flush)
            .unwrap()
            .ip,
        a.ip,
        "kept across restarts"
    );
    // a new sandbox of the same pod keeps the address
    let renewed = l
        .bind(&req("a", "c9"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_eq!((renewed.ip, renewed.existing), (a.ip, true));
    assert_eq!(l.pod(&req("a", "c9").pod).unwrap().container_id, "c9");
    assert!(l.check().is_empty(), "{:?}", l.check());
}

#[test]
fn release_cools_then_idles_and_ignores_stale_del() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    let a = l
        .bind(&req("a", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    let stale = l
        .release(
            &req("a", "c1").pod,
            Some("old-container"),
            Duration::from_secs(30),
            Durability::Flush,
        )
        .unwrap();
    assert!(
        stale.stale && stale.ips.is_empty(),
        "a DEL for an older sandbox changes nothing"
    );
    let r = l
        .release(
            &req("a", "c1").pod,
            Some("c1"),
            Duration::from_secs(30),
            Durability::Flush,
        )
        .unwrap();
    assert_eq!(r.ips, vec![a.ip]);
    assert!(matches!(l.snapshot().ips[&a.ip].state, IpState::Cooling { .. }));
    // the cooling address is not handed out
    for name in ["x", "y"] {
        assert_ne!(
            l.bind(&req(name, name), EniPreference::MostUsed, Durability::Flush)
                .unwrap()
                .ip,
            a.ip
        );
    }
    assert!(matches!(
        l.bind(&req("z", "z"), EniPreference::MostUsed, Durability::Flush),
        Err(LedgerError::NoIdleIp { cooling: 1 })
    ));
    assert_eq!(l.promote_cooled(now_millis(), Durability::Flush).unwrap(), 0, "not yet");
    assert_eq!(l.promote_cooled(now_millis() + 31_000, Durability::Flush).unwrap(), 1);
    assert_eq!(
        l.bind(&req("z", "z"), EniPreference::MostUsed, Durability::Flush)
            .unwrap()
            .ip,
        a.ip
    );
    // DEL of an unknown pod succeeds with nothing to do
    assert_eq!(
        l.release(
            &PodRef::new("ns", "nobody", ""),
            None,
            Duration::ZERO,
            Durability::Flush
        )
        .unwrap(),
        Released::default()
    );
}

#[test]
fn preference_packs_or_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    l.adopt_eni(eni("eni-b", 2), Durability::Flush).unwrap();
    l.adopt_ips("eni-b", &[ip("10.0.2.2"), ip("10.0.2.3")], Durability::Flush)
        .unwrap();
    let first = l
        .bind(&req("p1", "p1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    let packed = l
        .bind(&req("p2", "p2"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_eq!(first.eni.id, packed.eni.id, "most_ips packs onto the busier ENI");
    let spread = l
        .bind(&req("p3", "p3"), EniPreference::LeastUsed, Durability::Flush)
        .unwrap();
    assert_ne!(spread.eni.id, first.eni.id, "least_ips spreads");
}

#[test]
fn intents_keep_addresses_out_of_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    let marked = l.mark_releasing(&[ip("10.0.1.2")], Durability::Flush).unwrap();
    assert_eq!(marked, vec![ip("10.0.1.2")]);
    let intent = l
        .record_intent(
            IntentKind::UnassignIps {
                eni_id: "eni-a".into(),
                ips: vec![ip("10.0.1.3")],
            },
            None,
        )
        .unwrap();
    drop(l);
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.intents(), vec![intent.clone()], "intents survive a restart");
    let b = l
        .bind(&req("a", "a"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_eq!(b.ip, ip("10.0.1.4"), "neither the releasing nor the intent's address");
    l.complete_intent(intent.id, Durability::Flush).unwrap();
    let next = l
        .record_intent(
            IntentKind::CreateEni {
                vswitch_id: "vsw-1".into(),
            },
            Some("tok".into()),
        )
        .unwrap();
    assert!(next.id > intent.id, "intent ids are never reused");
    l.remove_ips(&[ip("10.0.1.2")], Durability::Flush).unwrap();
    assert!(!l.snapshot().ips.contains_key(&ip("10.0.1.2")));
    assert!(
        matches!(
            l.remove_ips(&[b.ip], Durability::Flush),
            Err(LedgerError::Conflict { .. })
        ),
        "a bound address stays"
    );
    assert!(matches!(
        l.remove_eni("eni-a", Durability::Flush),
        Err(LedgerError::Conflict { .. })
    ));
}

#[test]
fn exclusive_eni_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(dir.path()).unwrap();
    l.adopt_eni(eni("eni-x", 7), Durability::Flush).unwrap();
    let b = l.reserve_eni(&req("big", "c1"), true, Durability::Flush).unwrap();
    assert_eq!((b.eni.id.as_str(), b.ip), ("eni-x", ip("10.0.7.1")));
    assert_eq!(
        l.reserve_eni(&req("big", "c1"), true, Durability::Flush)
            .unwrap()
            .eni
            .id,
        "eni-x",
        "idempotent"
    );
    assert!(matches!(
        l.reserve_eni(&req("other", "c2"), true, Durability::Flush),
        Err(LedgerError::NoIdleEni)
    ));
    assert!(l.check().is_empty(), "{:?}", l.check());
    let r = l
        .release(&req("big", "c1").pod, Some("c1"), Duration::ZERO, Durability::Flush)
        .unwrap();
    assert_eq!(r.eni_id.as_deref(), Some("eni-x"));
    assert_eq!(
        l.reserve_eni(&req("other", "c2"), true, Durability::Flush)
            .unwrap()
            .eni
            .id,
        "eni-x"
    );
}

#[test]
fn shared_and_exclusive_enis_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(dir.path()).unwrap();
    l.adopt_eni(eni("eni-s", 1), Durability::Flush).unwrap();
    l.adopt_ips("eni-s", &[ip("10.0.1.1")], Durability::Flush).unwrap();
    l.adopt_eni(
        EniRecord {
            exclusive: true,
            ..eni("eni-x", 2)
        },
        Durability::Flush,
    )
    .unwrap();
    l.adopt_ips("eni-x", &[ip("10.0.2.1")], Durability::Flush).unwrap();
    // a shared pod never gets the exclusive ENI's address
    let shared = l
        .bind(&req("web", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_eq!(shared.eni.id, "eni-s");
    assert!(matches!(
        l.bind(&req("web2", "c2"), EniPreference::MostUsed, Durability::Flush),
        Err(LedgerError::NoIdleIp { .. })
    ));
    // on a shared node only a marked ENI is given whole
    let whole = l.reserve_eni(&req("db", "c3"), false, Durability::Flush).unwrap();
    assert_eq!((whole.eni.id.as_str(), whole.ip), ("eni-x", ip("10.0.2.1")));
    assert!(matches!(
        l.reserve_eni(&req("db2", "c4"), false, Durability::Flush),
        Err(LedgerError::NoIdleEni)
    ));
    assert!(l.check().is_empty(), "{:?}", l.check());
}

#[test]
fn opening_rules() {
    let dir = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open_with(
            dir.path(),
            &OpenOptions {
                instance_id: Some("i-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        // a second opener, even in the same process, is refused (after a short wait)
        let e = Ledger::open_with(
            dir.path(),
            &OpenOptions {
                lock_wait: Some(Duration::ZERO),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, LedgerError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("held by another process"));
        drop(l);
    }
    let e = Ledger::open_with(
        dir.path(),
        &OpenOptions {
            instance_id: Some("i-2".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("i-1") && e.to_string().contains("i-2"), "{e}");

    // a newer schema is refused, naming both versions
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta").unwrap().insert("schema_version", "99").unwrap();
        db.flush().unwrap();
    }
    let e = Ledger::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            LedgerError::NewerSchema {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("99") && e.to_string().contains(&SCHEMA_VERSION.to_string()));

    let missing = dir.path().join("nope");
    assert!(matches!(
        Ledger::open_with(
            &missing,
            &OpenOptions {
                must_exist: true,
                ..Default::default()
            }
        ),
        Err(LedgerError::NotFound { .. })
    ));
}

#[test]
fn migrates_a_v1_ledger() {
    let dir = tempfile::tempdir().unwrap();
    {
        // v1: no meta record, ENI records without route_table or status
        let db = sled::open(dir.path()).unwrap();
        let enis = db.open_tree("enis").unwrap();
        for (id, n) in [("eni-a", 1), ("eni-b", 2)] {
            let mut v = serde_json::to_value(eni(id, n)).unwrap();
            v.as_object_mut().unwrap().remove("route_table");
            v.as_object_mut().unwrap().remove("status");
            enis.insert(id, serde_json::to_vec(&v).unwrap()).unwrap();
        }
        db.flush().unwrap();
    }
    let l = Ledger::open(dir.path()).unwrap();
    let s = l.snapshot();
    assert_eq!(s.enis["eni-a"].route_table, ROUTE_TABLE_BASE + 1);
    assert_eq!(s.enis["eni-b"].route_table, ROUTE_TABLE_BASE + 2);
    assert_eq!(s.enis["eni-b"].status, EniStatus::InUse);
    assert!(s.undecodable.is_empty());
    assert_eq!(l.export().unwrap().meta.schema_version, SCHEMA_VERSION);
}

#[test]
fn undecodable_records_are_named_and_the_rest_reads() {
    let dir = tempfile::tempdir().unwrap();
    drop(ledger_with_pool(dir.path()));
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("ips")
            .unwrap()
            .insert("10.0.1.9", &b"{not json"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let l = Ledger::open(dir.path()).unwrap();
    let s = l.snapshot();
    assert_eq!(s.ips.len(), 3, "the good records are readable");
    let problems = l.check();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].record, "ips/10.0.1.9");
    assert!(problems[0].message.contains("cannot be decoded"));
    let moved = l.repair().unwrap();
    assert_eq!(moved.len(), 1);
    assert!(l.check().is_empty());
    let q = l.quarantined().unwrap();
    assert!(q["ips"]["10.0.1.9"].contains("{not json"), "kept, not deleted: {q:?}");
}

#[test]
fn check_names_broken_records_and_repair_moves_them_aside() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    let a = l
        .bind(&req("a", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    drop(l);
    {
        // break it behind the ledger's back: the pod record vanishes, and an address points at a missing ENI
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("pods").unwrap().remove("default/a").unwrap();
        let orphan = IpRecord {
            ip: ip("10.9.9.9"),
            eni_id: "eni-gone".into(),
            state: IpState::Idle,
        };
        db.open_tree("ips")
            .unwrap()
            .insert("10.9.9.9", serde_json::to_vec(&orphan).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let l = Ledger::open(dir.path()).unwrap();
    let problems = l.check();
    let records: Vec<&str> = problems.iter().map(|p| p.record.as_str()).collect();
    assert!(records.contains(&format!("ips/{}", a.ip).as_str()), "{problems:?}");
    assert!(records.contains(&"ips/10.9.9.9"), "{problems:?}");
    assert!(problems.iter().any(|p| p.message.contains("default/a")), "{problems:?}");
    l.repair().unwrap();
    assert!(l.check().is_empty());
    assert_eq!(l.quarantined().unwrap()["ips"].len(), 2);
}

#[test]
fn a_snapshot_left_unfinished_by_a_crash_does_not_stop_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    let a = l
        .bind(&req("a", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    drop(l);
    // what a kill in the middle of sled's snapshot write leaves: sled 0.34
    // would read it as its newest snapshot and refuse to open
    std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFF0.generating"), b"torn").unwrap();
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.pod(&req("a", "c1").pod).unwrap().ips, vec![a.ip]);
    assert!(!dir.path().join("snap.FFFFFFFFFFFFFFF0.generating").exists());
}

#[test]
fn a_log_of_many_commits_is_retired_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    // enough binds and releases to pass the log's retirement size more than once
    for i in 0..12_000 {
        let r = req(&format!("p{}", i % 2), &format!("c{i}"));
        l.bind(&r, EniPreference::MostUsed, Durability::Lazy).unwrap();
        if i % 2 == 1 {
            l.release(&r.pod, None, std::time::Duration::ZERO, Durability::Lazy)
                .unwrap();
        }
    }
    l.flush().unwrap();
    // the first log was retired: deleted in the background once sled held it
    let first = dir.path().join("wal.0000000000000001");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while first.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!first.exists(), "the first log is retired and deleted");
    let before = l.snapshot();
    drop(l);
    let l = Ledger::open(dir.path()).unwrap();
    assert_eq!(l.snapshot().pods, before.pods);
    assert_eq!(l.snapshot().ips, before.ips);
    assert!(l.check().is_empty(), "{:?}", l.check());
}

#[test]
fn addresses_other_pods_hold_are_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger_with_pool(dir.path());
    let ours = l
        .bind(&req("ours", "c1"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    let upstream = |veth: &str| BindRequest {
        pod: PodRef::new("_upstream", veth, ""),
        container_id: String::new(),
        netns: String::new(),
        ifname: "eth0".into(),
        settings: PodNetworkSettings::default(),
        ipv6: false,
    };
    let idle: Vec<IpAddr> = ["10.0.1.2", "10.0.1.3", "10.0.1.4"]
        .into_iter()
        .map(ip)
        .filter(|a| *a != ours.ip)
        .collect();
    // one idle address, one the ledger does not know yet, and our own pod's
    let holders = vec![
        (idle[0], upstream("cali00000000001")),
        (ip("10.0.1.9"), upstream("cali00000000002")),
        (ours.ip, upstream("cali00000000003")),
    ];
    let held = l.hold_for_pods("eni-a", &holders, Durability::Flush).unwrap();
    assert_eq!(held, [idle[0], ip("10.0.1.9")], "our own pod keeps its address");
    assert!(
        l.hold_for_pods("eni-a", &holders, Durability::Flush)
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    assert!(l.check().is_empty(), "{:?}", l.check());
    // only the one address nobody holds is handed out
    let next = l
        .bind(&req("next", "c2"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert_eq!(next.ip, idle[1]);
    assert!(matches!(
        l.bind(&req("more", "c3"), EniPreference::MostUsed, Durability::Flush),
        Err(LedgerError::NoIdleIp { .. })
    ));
    // the holder's release gives the address back
    let released = l
        .release(
            &upstream("cali00000000002").pod,
            Some(""),
            Duration::ZERO,
            Durability::Flush,
        )
        .unwrap();
    assert_eq!(released.ips, [ip("10.0.1.9")]);
    assert_eq!(
        l.bind(&req("more", "c3"), EniPreference::MostUsed, Durability::Flush)
            .unwrap()
            .ip,
        ip("10.0.1.9")
    );
    let e = l.hold_for_pods("eni-x", &holders, Durability::Flush).unwrap_err();
    assert!(matches!(e, LedgerError::UnknownEni { .. }), "{e}");
    // a dual-stack holder's IPv6 address, found later, joins its record
    let v6 = ip("fd00::a:1");
    l.hold_for_pods("eni-a", &[(v6, upstream("cali00000000001"))], Durability::Flush)
        .unwrap();
    assert_eq!(l.pod(&upstream("cali00000000001").pod).unwrap().ips, [idle[0], v6]);
    assert!(l.check().is_empty(), "{:?}", l.check());
}

#[test]
fn a_dual_stack_pod_gets_one_address_of_each_family_from_one_eni() {
    let dir = tempfile::tempdir().unwrap();
    let l = Ledger::open(dir.path()).unwrap();
    let with_ipv6 = |record: EniRecord| EniRecord {
        ipv6: Some(terway_statestore::EniIpv6 {
            gateway: "fd00::1".parse().unwrap(),
            cidr: "fd00::/64".into(),
        }),
        ..record
    };
    l.adopt_eni(with_ipv6(eni("eni-a", 1)), Durability::Flush).unwrap();
    l.adopt_eni(with_ipv6(eni("eni-b", 2)), Durability::Flush).unwrap();
    // recorded without its IPv6 gateway: its IPv6 address serves no pod
    l.adopt_eni(eni("eni-c", 3), Durability::Flush).unwrap();
    // eni-a has IPv4 only yet; eni-b both
    l.adopt_ips("eni-a", &[ip("10.0.1.2"), ip("10.0.1.3")], Durability::Flush)
        .unwrap();
    l.adopt_ips("eni-b", &[ip("10.0.2.2"), ip("fd00::b:2")], Durability::Flush)
        .unwrap();
    l.adopt_ips("eni-c", &[ip("10.0.3.2"), ip("fd00::c:2")], Durability::Flush)
        .unwrap();
    let dual = |name: &str| BindRequest {
        ipv6: true,
        ..req(name, name)
    };
    let a = l.bind(&dual("a"), EniPreference::MostUsed, Durability::Flush).unwrap();
    assert_eq!(
        (a.ip, a.ipv6, a.eni.id.as_str()),
        (ip("10.0.2.2"), Some(ip("fd00::b:2")), "eni-b")
    );
    assert_eq!(l.pod(&dual("a").pod).unwrap().ips, [ip("10.0.2.2"), ip("fd00::b:2")]);
    // a repeated ADD gets both again
    assert_eq!(
        l.bind(&dual("a"), EniPreference::MostUsed, Durability::Flush)
            .unwrap()
            .ipv6,
        Some(ip("fd00::b:2"))
    );
    // IPv4 addresses without an IPv6 beside them do not serve a dual-stack pod
    assert!(matches!(
        l.bind(&dual("b"), EniPreference::MostUsed, Durability::Flush),
        Err(LedgerError::NoIdleIp { .. })
    ));
    // an IPv4-only pod never takes an IPv6 address
    let v4 = l
        .bind(&req("c", "c"), EniPreference::MostUsed, Durability::Flush)
        .unwrap();
    assert!(v4.ip.is_ipv4() && v4.ipv6.is_none());
    let released = l
        .release(&dual("a").pod, Some("a"), Duration::ZERO, Durability::Flush)
        .unwrap();
    assert_eq!(released.ips.len(), 2);
    assert!(l.check().is_empty(), "{:?}", l.check());
}
