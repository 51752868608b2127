//! The ledger against a snapshot of the cloud: what to adopt, what vanished,
//! and how each unresolved intent turned out.

use crate::ledger::State;
use crate::model::IntentKind;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// One ENI as the cloud shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEni {
    pub id: String,
    pub vswitch_id: String,
    /// Attached (InUse) to this instance.
    pub attached: bool,
    /// Every address on it, its primary first.
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentOutcome {
    /// The cloud shows the mutation happened.
    Done,
    /// The cloud shows it did not happen.
    NotDone,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerDiff {
    /// Attached cloud ENIs the ledger does not know.
    pub new_enis: Vec<String>,
    /// Addresses on attached cloud ENIs the ledger does not know: (ENI, addresses).
    pub adopt: Vec<(String, Vec<IpAddr>)>,
    /// Ledger addresses the cloud no longer shows.
    pub vanished_ips: Vec<IpAddr>,
    /// Ledger ENIs the cloud no longer shows attached.
    pub vanished_enis: Vec<String>,
    pub intents: Vec<(u64, IntentOutcome)>,
}

pub fn diff(ledger: &State, cloud: &[CloudEni]) -> LedgerDiff {
    let by_id: BTreeMap<&str, &CloudEni> = cloud.iter().map(|e| (e.id.as_str(), e)).collect();
    let attached: Vec<&CloudEni> = cloud.iter().filter(|e| e.attached).collect();
    let mut out = LedgerDiff::default();
    for e in &attached {
        if !ledger.enis.contains_key(&e.id) {
            out.new_enis.push(e.id.clone());
        }
        let unknown: Vec<IpAddr> = e
            .ips
            .iter()
            .filter(|ip| !ledger.ips.contains_key(ip))
            .copied()
            .collect();
        if !unknown.is_empty() {
            out.adopt.push((e.id.clone(), unknown));
        }
    }
    for id in ledger.enis.keys() {
        if !by_id.get(id.as_str()).is_some_and(|e| e.attached) {
            out.vanished_enis.push(id.clone());
        }
    }
    let cloud_ips: BTreeSet<(&str, IpAddr)> = attached
        .iter()
        .flat_map(|e| e.ips.iter().map(move |ip| (e.id.as_str(), *ip)))
        .collect();
    for (ip, r) in &ledger.ips {
        if !cloud_ips.contains(&(r.eni_id.as_str(), *ip)) {
            out.vanished_ips.push(*ip);
        }
    }
    for intent in ledger.intents.values() {
        let eni = |id: &str| by_id.get(id).copied();
        let done = match &intent.kind {
            IntentKind::AssignIps { eni_id, .. } => {
                eni(eni_id).is_some_and(|e| e.ips.iter().any(|ip| !ledger.ips.contains_key(ip)))
            }
            IntentKind::UnassignIps { eni_id, ips } => {
                eni(eni_id).is_none_or(|e| ips.iter().all(|ip| !e.ips.contains(ip)))
            }
            IntentKind::CreateEni { vswitch_id } => cloud
                .iter()
                .any(|e| &e.vswitch_id == vswitch_id && !ledger.enis.contains_key(&e.id)),
            IntentKind::AttachEni { eni_id } => eni(eni_id).is_some_and(|e| e.attached),
            IntentKind::DetachEni { eni_id } => eni(eni_id).is_none_or(|e| !e.attached),
            IntentKind::DeleteEni { eni_id } => eni(eni_id).is_none(),
        };
        out.intents.push((
            intent.id,
            if done {
                IntentOutcome::Done
            } else {
                IntentOutcome::NotDone
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn state() -> State {
        let mut s = State::default();
        s.enis.insert(
            "eni-a".into(),
            EniRecord {
                id: "eni-a".into(),
                mac: "00:16:3e:00:00:01".into(),
                vswitch_id: "vsw-1".into(),
                gateway: ip("10.0.0.253"),
                cidr: "10.0.0.0/24".into(),
                primary_ip: ip("10.0.0.1"),
                status: EniStatus::InUse,
                route_table: 1001,
                created_by_us: true,
                owner: None,
                exclusive: false,
                ipv6: None,
            },
        );
        for a in ["10.0.0.1", "10.0.0.2"] {
            s.ips.insert(
                ip(a),
                IpRecord {
                    ip: ip(a),
                    eni_id: "eni-a".into(),
                    state: IpState::Idle,
                },
            );
        }
        s
    }

    #[test]
    fn adoption_and_vanishing() {
        let s = state();
        let cloud = vec![
            CloudEni {
                id: "eni-a".into(),
                vswitch_id: "vsw-1".into(),
                attached: true,
                ips: vec![ip("10.0.0.1"), ip("10.0.0.3")],
            },
            CloudEni {
                id: "eni-b".into(),
                vswitch_id: "vsw-1".into(),
                attached: true,
                ips: vec![ip("10.0.0.9")],
            },
            CloudEni {
                id: "eni-c".into(),
                vswitch_id: "vsw-1".into(),
                attached: false,
                ips: vec![ip("10.0.0.7")],
            },
        ];
        let d = diff(&s, &cloud);
        assert_eq!(d.new_enis, vec!["eni-b".to_owned()], "unattached ENIs are not adopted");
        assert_eq!(
            d.adopt,
            vec![
                ("eni-a".into(), vec![ip("10.0.0.3")]),
                ("eni-b".into(), vec![ip("10.0.0.9")])
            ]
        );
        assert_eq!(d.vanished_ips, vec![ip("10.0.0.2")]);
        assert!(d.vanished_enis.is_empty());
        let d = diff(&s, &[]);
        assert_eq!(d.vanished_enis, vec!["eni-a".to_owned()]);
        assert_eq!(d.vanished_ips.len(), 2);
    }

    #[test]
    fn intent_outcomes() {
        let mut s = state();
        let mut add = |id: u64, kind: IntentKind| {
            s.intents.insert(
                id,
                Intent {
                    id,
                    kind,
                    client_token: None,
                    created_at: 0,
                },
            );
        };
        add(
            1,
            IntentKind::AssignIps {
                eni_id: "eni-a".into(),
                count: 1,
                ipv6: false,
            },
        );
        add(
            2,
            IntentKind::UnassignIps {
                eni_id: "eni-a".into(),
                ips: vec![ip("10.0.0.2")],
            },
        );
        add(
            3,
            IntentKind::CreateEni {
                vswitch_id: "vsw-1".into(),
            },
        );
        add(4, IntentKind::AttachEni { eni_id: "eni-x".into() });
        add(5, IntentKind::DetachEni { eni_id: "eni-a".into() });
        add(
            6,
            IntentKind::DeleteEni {
                eni_id: "eni-gone".into(),
            },
        );
        // nothing happened in the cloud
        let cloud = vec![
            CloudEni {
                id: "eni-a".into(),
                vswitch_id: "vsw-1".into(),
                attached: true,
                ips: vec![ip("10.0.0.1"), ip("10.0.0.2")],
            },
            CloudEni {
                id: "eni-x".into(),
                vswitch_id: "vsw-2".into(),
                attached: false,
                ips: vec![ip("10.0.1.1")],
            },
        ];
        let outcomes: BTreeMap<u64, IntentOutcome> = diff(&s, &cloud).intents.into_iter().collect();
        assert_eq!(outcomes[&1], IntentOutcome::NotDone);
        assert_eq!(outcomes[&2], IntentOutcome::NotDone);
        assert_eq!(outcomes[&3], IntentOutcome::NotDone, "eni-x is on another vSwitch");
        assert_eq!(outcomes[&4], IntentOutcome::NotDone);
        assert_eq!(outcomes[&5], IntentOutcome::NotDone);
        assert_eq!(outcomes[&6], IntentOutcome::Done);
        // everything happened
        let cloud = vec![
            CloudEni {
                id: "eni-a".into(),
                vswitch_id: "vsw-1".into(),
                attached: false,
                ips: vec![ip("10.0.0.1"), ip("10.0.0.5")],
            },
            CloudEni {
                id: "eni-x".into(),
                vswitch_id: "vsw-1".into(),
                attached: true,
                ips: vec![ip("10.0.1.1")],
            },
        ];
        let outcomes: BTreeMap<u64, IntentOutcome> = diff(&s, &cloud).intents.into_iter().collect();
        assert!(outcomes.values().all(|o| *o == IntentOutcome::Done), "{outcomes:?}");
    }
}
