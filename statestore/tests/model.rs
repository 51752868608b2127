//! Model-based test: random operation sequences against the ledger and a
//! plain in-memory model, with reopens in between; they must never differ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;
use terway_statestore::*;

const ENIS: u8 = 3;
const IPS_PER_ENI: u8 = 4;
const PODS: u8 = 6;

#[derive(Debug, Clone)]
enum Op {
    AdoptEni(u8),
    Bind { pod: u8, container: u8, spread: bool },
    Release { pod: u8, container: Option<u8>, cool: bool },
    Promote,
    MarkReleasing(u8, u8),
    RemoveIp(u8, u8),
    RecordUnassign(u8, u8),
    CompleteOldestIntent,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..ENIS).prop_map(Op::AdoptEni),
        6 => (0..PODS, 0..2u8, any::<bool>()).prop_map(|(pod, container, spread)| Op::Bind { pod, container, spread }),
        4 => (0..PODS, proptest::option::of(0..2u8), any::<bool>()).prop_map(|(pod, container, cool)| Op::Release { pod, container, cool }),
        1 => Just(Op::Promote),
        1 => (0..ENIS, 0..IPS_PER_ENI).prop_map(|(e, i)| Op::MarkReleasing(e, i)),
        1 => (0..ENIS, 0..IPS_PER_ENI).prop_map(|(e, i)| Op::RemoveIp(e, i)),
        1 => (0..ENIS, 0..IPS_PER_ENI).prop_map(|(e, i)| Op::RecordUnassign(e, i)),
        1 => Just(Op::CompleteOldestIntent),
        2 => Just(Op::Reopen),
    ]
}

fn eni_id(e: u8) -> String {
    format!("eni-{e}")
}

fn addr(e: u8, i: u8) -> IpAddr {
    IpAddr::from([10, 0, e, i + 2])
}

fn pod(p: u8) -> PodRef {
    PodRef::new("ns", &format!("pod-{p}"), "uid")
}

/// What the ledger should hold, in the simplest terms.
#[derive(Debug, Default, Clone, PartialEq)]
struct Model {
    enis: BTreeSet<String>,
    /// address → (ENI, state: "idle" | "cooling" | "releasing" | "bound:<pod>/<container>")
    ips: BTreeMap<IpAddr, (String, String)>,
    /// pod key → (container, address)
    pods: BTreeMap<String, (String, IpAddr)>,
    /// intent id → held addresses
    intents: BTreeMap<u64, Vec<IpAddr>>,
}

impl Model {
    fn from_ledger(s: &State) -> Self {
        Self {
            enis: s.enis.keys().cloned().collect(),
            ips: s
                .ips
                .values()
                .map(|r| {
                    let state = match &r.state {
                        IpState::Bound(b) => format!("bound:{}/{}", b.pod.key(), b.container_id),
                        other => other.name().to_owned(),
                    };
                    (r.ip, (r.eni_id.clone(), state))
                })
                .collect(),
            pods: s
                .pods
                .iter()
                .map(|(k, p)| (k.clone(), (p.container_id.clone(), p.ips[0])))
                .collect(),
            intents: s
                .intents
                .iter()
                .map(|(id, i)| (*id, i.kind.touched_ips().to_vec()))
                .collect(),
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Some(Ledger::open(dir.path()).unwrap());
    let mut m = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let l = ledger.as_ref().unwrap();
        match op.clone() {
            Op::AdoptEni(e) => {
                let id = eni_id(e);
                let record = common::eni(&id, e);
                l.adopt_eni(record, Durability::Flush).unwrap();
                let ips: Vec<IpAddr> = (0..IPS_PER_ENI).map(|i| addr(e, i)).collect();
                let fresh = l.adopt_ips(&id, &ips, Durability::Flush).unwrap();
                m.enis.insert(id.clone());
                let mut want = Vec::new();
                for ip in ips {
                    if let std::collections::btree_map::Entry::Vacant(v) = m.ips.entry(ip) {
                        v.insert((id.clone(), "idle".into()));
                        want.push(ip);
                    }
                }
                prop_assert_eq!(fresh, want, "step {}: adopted", step);
            }
            Op::Bind {
                pod: p,
                container,
                spread,
            } => {
                let key = pod(p).key();
                let container = format!("c{container}");
                let request = BindRequest {
                    pod: pod(p),
                    container_id: container.clone(),
                    netns: "/proc/1/ns/net".into(),
                    ifname: "eth0".into(),
                    settings: PodNetworkSettings::default(),
                    ipv6: false,
                };
                let pref = if spread {
                    EniPreference::LeastUsed
                } else {
                    EniPreference::MostUsed
                };
                let result = l.bind(&request, pref, Durability::Flush);
                let held: BTreeSet<IpAddr> = m.intents.values().flatten().copied().collect();
                if let Some((_, ip)) = m.pods.get(&key).cloned() {
                    let got = result.unwrap();
                    prop_assert_eq!(got.ip, ip, "step {}: the pod keeps its address", step);
                    m.pods.insert(key.clone(), (container.clone(), ip));
                    m.ips.get_mut(&ip).unwrap().1 = format!("bound:{key}/{container}");
                } else {
                    let idle: BTreeSet<IpAddr> = m
                        .ips
                        .iter()
                        .filter(|(ip, (_, s))| s == "idle" && !held.contains(ip))
                        .map(|(ip, _)| *ip)
                        .collect();
                    match result {
                        Ok(got) => {
                            prop_assert!(
                                idle.contains(&got.ip),
                                "step {}: {} was not idle and free",
                                step,
                                got.ip
                            );
                            prop_assert!(!got.existing);
                            m.pods.insert(key.clone(), (container.clone(), got.ip));
                            m.ips.get_mut(&got.ip).unwrap().1 = format!("bound:{key}/{container}");
                        }
                        Err(LedgerError::NoIdleIp { .. }) => {
                            prop_assert!(idle.is_empty(), "step {}: refused with {:?} idle", step, idle)
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("step {step}: {e}"))),
                    }
                }
            }
            Op::Release {
                pod: p,
                container,
                cool,
            } => {
                let key = pod(p).key();
                let container = container.map(|c| format!("c{c}"));
                let cooldown = if cool { Duration::from_secs(60) } else { Duration::ZERO };
                let r = l
                    .release(&pod(p), container.as_deref(), cooldown, Durability::Flush)
                    .unwrap();
                match m.pods.get(&key).cloned() {
                    None => prop_assert_eq!(r, Released::default()),
                    Some((c, _)) if container.as_ref().is_some_and(|want| *want != c) => prop_assert!(r.stale),
                    Some((_, ip)) => {
                        prop_assert_eq!(r.ips, vec![ip]);
                        m.pods.remove(&key);
                        m.ips.get_mut(&ip).unwrap().1 = if cool { "cooling" } else { "idle" }.into();
                    }
                }
            }
            Op::Promote => {
                let n = l.promote_cooled(u64::MAX, Durability::Flush).unwrap();
                let mut want = 0;
                for (_, s) in m.ips.values_mut() {
                    if s == "cooling" {
                        *s = "idle".into();
                        want += 1;
                    }
                }
                prop_assert_eq!(n, want);
            }
            Op::MarkReleasing(e, i) => {
                let ip = addr(e, i);
                let marked = l.mark_releasing(&[ip], Durability::Flush).unwrap();
                let was_idle = m.ips.get(&ip).is_some_and(|(_, s)| s == "idle");
                prop_assert_eq!(marked.len(), usize::from(was_idle));
                if was_idle {
                    m.ips.get_mut(&ip).unwrap().1 = "releasing".into();
                }
            }
            Op::RemoveIp(e, i) => {
                let ip = addr(e, i);
                let result = l.remove_ips(&[ip], Durability::Flush);
                match m.ips.get(&ip) {
                    Some((_, s)) if s.starts_with("bound") => prop_assert!(result.is_err()),
                    _ => {
                        result.unwrap();
                        m.ips.remove(&ip);
                    }
                }
            }
            Op::RecordUnassign(e, i) => {
                let ip = addr(e, i);
                let intent = l
                    .record_intent(
                        IntentKind::UnassignIps {
                            eni_id: eni_id(e),
                            ips: vec![ip],
                        },
                        None,
                    )
                    .unwrap();
                prop_assert!(m.intents.keys().all(|id| *id < intent.id), "ids grow");
                m.intents.insert(intent.id, vec![ip]);
            }
            Op::CompleteOldestIntent => {
                if let Some(id) = m.intents.keys().next().copied() {
                    l.complete_intent(id, Durability::Flush).unwrap();
                    m.intents.remove(&id);
                }
            }
            Op::Reopen => {
                drop(ledger.take());
                ledger = Some(Ledger::open(dir.path()).unwrap());
            }
        }
        let l = ledger.as_ref().unwrap();
        let seen = Model::from_ledger(&l.snapshot());
        prop_assert_eq!(&seen, &m, "step {}: after {:?}", step, op);
        prop_assert!(l.check().is_empty(), "step {}: {:?}", step, l.check());
    }
    // and what is on disk equals what was in memory
    drop(ledger.take());
    let reopened = Ledger::open(dir.path()).unwrap();
    prop_assert_eq!(Model::from_ledger(&reopened.snapshot()), m);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn ledger_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
