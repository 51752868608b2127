//! Cross-tree consistency: what `check` reports and `repair` moves aside.

use crate::ledger::{Ledger, State};
use crate::model::*;
use crate::LedgerError;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One broken record: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `tree/key`, e.g. `ips/192.168.1.7`.
    pub record: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.record, self.message)
    }
}

fn problem(tree: &str, key: impl std::fmt::Display, message: String) -> Problem {
    Problem {
        record: format!("{tree}/{key}"),
        message,
    }
}

/// Every inconsistency in `s`.
pub fn check(s: &State) -> Vec<Problem> {
    let mut out: Vec<Problem> = s
        .undecodable
        .iter()
        .map(|(tree, key, err)| problem(tree, key, format!("cannot be decoded: {err}")))
        .collect();
    let mut claimed: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (key, pod) in &s.pods {
        if pod.ips.is_empty() {
            out.push(problem("pods", key, "has no IP".into()));
        }
        for ip in &pod.ips {
            if let Some(other) = claimed.insert(*ip, key) {
                out.push(problem(
                    "pods",
                    key,
                    format!("claims {ip}, which pod {other} claims too"),
                ));
            }
            if pod.eni_id.is_some() {
                continue; // an exclusive ENI's primary address is not in the ips tree
            }
            match s.ips.get(ip).map(|r| &r.state) {
                None => out.push(problem("pods", key, format!("claims {ip}, which is not in the ledger"))),
                Some(IpState::Bound(b)) if b.pod.key() == *key && b.container_id == pod.container_id => {}
                Some(IpState::Bound(b)) => out.push(problem(
                    "pods",
                    key,
                    format!(
                        "claims {ip}, which is bound to {} (container {})",
                        b.pod, b.container_id
                    ),
                )),
                Some(other) => out.push(problem("pods", key, format!("claims {ip}, which is {}", other.name()))),
            }
        }
        if let Some(eni_id) = &pod.eni_id {
            match s.enis.get(eni_id) {
                None => out.push(problem(
                    "pods",
                    key,
                    format!("holds ENI {eni_id}, which is not in the ledger"),
                )),
                Some(e) if e.owner.as_ref().map(PodRef::key).as_deref() != Some(key.as_str()) => {
                    out.push(problem(
                        "pods",
                        key,
                        format!(
                            "holds ENI {eni_id}, which is reserved for {:?}",
                            e.owner.as_ref().map(PodRef::key)
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for (ip, r) in &s.ips {
        if !s.enis.contains_key(&r.eni_id) {
            out.push(problem(
                "ips",
                ip,
                format!("is on ENI {}, which is not in the ledger", r.eni_id),
            ));
        }
        if let IpState::Bound(b) = &r.state {
            match s.pods.get(&b.pod.key()) {
                None => out.push(problem(
                    "ips",
                    ip,
                    format!("is bound to pod {}, which is not in the ledger", b.pod),
                )),
                Some(p) if !p.ips.contains(ip) => out.push(problem(
                    "ips",
                    ip,
                    format!("is bound to pod {}, which does not list it", b.pod),
                )),
                Some(_) => {}
            }
        }
    }
    for (id, e) in &s.enis {
        if let Some(owner) = &e.owner {
            if s.pods.get(&owner.key()).and_then(|p| p.eni_id.as_deref()) != Some(id.as_str()) {
                out.push(problem(
                    "enis",
                    id,
                    format!("is reserved for pod {owner}, which does not hold it"),
                ));
            }
        }
    }
    out
}

impl Ledger {
    /// Every inconsistency in the ledger.
    pub fn check(&self) -> Vec<Problem> {
        check(&self.snapshot())
    }

    /// Moves each broken record into the quarantine tree (kept with its
    /// reason, not deleted) so the daemon can rebuild from the cloud.
    /// Returns what was moved.
    pub fn repair(&self) -> Result<Vec<Problem>, LedgerError> {
        let problems = self.check();
        let mut moves = Vec::new();
        for p in &problems {
            if let Some((tree, key)) = p.record.split_once('/') {
                moves.push((tree.to_owned(), key.to_owned(), p.message.clone()));
            }
        }
        moves.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        self.quarantine(&moves)?;
        // moving a record can orphan another (an IP whose pod was moved): repeat until clean
        let again = self.check();
        if !again.is_empty() && again != problems {
            let mut more = self.repair()?;
            let mut all = problems;
            all.append(&mut more);
            return Ok(all);
        }
        Ok(problems)
    }
}
