//! The policy engine: cluster facts in, the kernel's table kept equal to
//! what they call for. Changes are recorded as they come (cheap, under a
//! lock); [`Enforcer::sync`] turns everything recorded since the last one
//! into one nftables transaction. Until every watch has listed once the
//! engine is not ready: it never writes a table from half a picture (after
//! a restart the kernel keeps the previous rules in force meanwhile).

use super::calico::model::CalicoPolicy;
use super::model::{ClusterState, Direction, Labels, ObjectKey, PodInfo, Policy};
use super::nft::{Nft, NftError};
use super::ruleset::{self, Applied, Chains, LocalPod, Sets};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Nothing was written (nothing changed).
    pub unchanged: bool,
    /// The whole table was written (first sync, or after a failure).
    pub full: bool,
    /// Lines of the nftables script.
    pub script_lines: usize,
    pub took: Duration,
    /// Of `took`, the time nftables took to apply the script.
    pub nft_took: Duration,
}

/// What a sync wrote: the whole wanted table, or new members of some sets.
enum Written {
    Table(Applied),
    Elements(ruleset::SetMembers),
}

/// Figures for metrics and `terway-cli status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PolicyStats {
    pub ready: bool,
    pub policies: usize,
    pub pods_known: usize,
    pub local_pods: usize,
    pub isolated_pods: usize,
    pub rules: usize,
    pub sets: usize,
    pub set_elements: usize,
    pub syncs: u64,
    pub sync_errors: u64,
    pub last_sync_seconds: f64,
    /// Durations of the syncs that wrote something.
    #[serde(skip)]
    pub sync_duration: crate::daemon::measurements::Histogram,
    pub last_error: Option<String>,
    /// Local pods a policy selects but whose mode cannot be policed.
    pub unenforceable: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Enforcer {
    pub state: ClusterState,
    locals: BTreeMap<ObjectKey, LocalPod>,
    /// Local pods in a mode the host cannot police, and why.
    unpoliced: BTreeMap<ObjectKey, String>,
    sets: Sets,
    chains: Chains,
    chains_dirty: bool,
    /// What the kernel holds; `None`: unknown (write everything next time).
    applied: Option<Applied>,
    ready: bool,
    nft: Nft,
    stats: PolicyStats,
}

impl Enforcer {
    pub fn new(nft: Nft) -> Self {
        Self {
            state: ClusterState::default(),
            locals: BTreeMap::new(),
            unpoliced: BTreeMap::new(),
            sets: Sets::default(),
            chains: Chains::default(),
            chains_dirty: true,
            applied: None,
            ready: false,
            nft,
            stats: PolicyStats::default(),
        }
    }

    /// Every watch has listed once: syncs may write the table from now on.
    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    // ---- cluster facts ----

    pub fn upsert_pod(&mut self, key: ObjectKey, mut info: PodInfo) {
        if let Some(local) = self.locals.get(&key) {
            // this node knows its own pods' addresses before the API server does
            info.ips.clone_from(&local.ips);
            self.chains_dirty = true;
        }
        if self.state.pods.get(&key) == Some(&info) {
            return;
        }
        self.state.pods.insert(key.clone(), info);
        self.sets.update_pod(&self.state, &key);
    }

    pub fn remove_pod(&mut self, key: &ObjectKey) {
        if self.locals.contains_key(key) {
            return; // its sandbox is still here: DEL removes it
        }
        if self.state.pods.remove(key).is_some() {
            self.sets.update_pod(&self.state, key);
        }
    }

    pub fn set_namespace(&mut self, name: &str, labels: Option<Labels>) {
        let changed = match labels {
            Some(l) => self.state.namespaces.insert(name.to_owned(), l.clone()) != Some(l),
            None => self.state.namespaces.remove(name).is_some(),
        };
        if !changed {
            return;
        }
        let members: Vec<ObjectKey> = self
            .state
            .pods
            .keys()
            .filter(|k| k.namespace == name)
            .cloned()
            .collect();
        if !self.state.calico.is_empty() && members.iter().any(|k| self.locals.contains_key(k)) {
            self.chains_dirty = true;
        }
        for key in members {
            self.sets.update_pod(&self.state, &key);
        }
    }

    /// A Calico NetworkPolicy or GlobalNetworkPolicy (key: its namespace, "" when global).
    pub fn set_calico(&mut self, key: ObjectKey, policy: Option<CalicoPolicy>) {
        let changed = match policy {
            Some(p) if self.state.calico.get(&key) == Some(&p) => false,
            Some(p) => {
                self.state.calico.insert(key, p);
                true
            }
            None => self.state.calico.remove(&key).is_some(),
        };
        self.chains_dirty |= changed;
    }

    pub fn replace_calico(&mut self, policies: BTreeMap<ObjectKey, CalicoPolicy>) {
        self.state.calico = policies;
        self.chains_dirty = true;
    }

    /// A service account's labels (Calico's serviceAccountSelector): pods'
    /// set membership and local pods' chains may change.
    pub fn set_service_account(&mut self, key: ObjectKey, labels: Option<Labels>) {
        let changed = match labels {
            Some(l) => self.state.service_accounts.insert(key, l.clone()) != Some(l),
            None => self.state.service_accounts.remove(&key).is_some(),
        };
        if changed && !self.state.calico.is_empty() {
            self.sets.rebuild(&self.state);
            self.applied_sets_unknown();
            self.chains_dirty = true;
        }
    }

    pub fn replace_service_accounts(&mut self, accounts: HashMap<ObjectKey, Labels>) {
        self.state.service_accounts = accounts;
        self.sets.rebuild(&self.state);
        self.applied_sets_unknown();
        self.chains_dirty = true;
    }

    pub fn set_policy(&mut self, key: ObjectKey, policy: Option<Policy>) {
        match policy {
            Some(p) => {
                if self.state.policies.get(&key) == Some(&p) {
                    return;
                }
                self.state.policies.insert(key, p);
            }
            None => {
                if self.state.policies.remove(&key).is_none() {
                    return;
                }
            }
        }
        self.chains_dirty = true;
    }

    /// A relist of pods: the watch's whole picture replaces ours.
    pub fn replace_pods(&mut self, pods: HashMap<ObjectKey, PodInfo>) {
        self.state.pods = pods;
        for (key, local) in &self.locals {
            let pod = self.state.pods.entry(key.clone()).or_default();
            pod.ips.clone_from(&local.ips);
        }
        self.sets.rebuild(&self.state);
        self.chains_dirty = true;
        self.applied_sets_unknown();
    }

    pub fn replace_namespaces(&mut self, namespaces: HashMap<String, Labels>) {
        self.state.namespaces = namespaces;
        self.sets.rebuild(&self.state);
        self.applied_sets_unknown();
        // a GlobalNetworkPolicy's namespaceSelector picks local pods by their namespace's labels
        self.chains_dirty |= !self.state.calico.is_empty();
    }

    pub fn replace_policies(&mut self, policies: BTreeMap<ObjectKey, Policy>) {
        self.state.policies = policies;
        self.chains_dirty = true;
    }

    /// After a rebuild every set may differ: compare them all next sync.
    fn applied_sets_unknown(&mut self) {
        let names: Vec<String> = self.sets.content.keys().cloned().collect();
        for name in names {
            self.sets.mark_dirty(&name);
        }
    }

    /// Policy switched off: forget what the watches told (this node's own
    /// pods stay known, for when it is switched on again).
    pub fn forget_cluster(&mut self) {
        let keep: HashMap<ObjectKey, PodInfo> = self
            .state
            .pods
            .iter()
            .filter(|(k, _)| self.locals.contains_key(*k) || self.unpoliced.contains_key(*k))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        self.state = ClusterState::default();
        self.state.pods = keep;
        self.sets = Sets::default();
        self.chains = Chains::default();
        self.chains_dirty = true;
        self.applied = None;
        self.ready = false;
    }

    // ---- this node's pods ----

    /// A pod this node wired. `known` is what the pod's object said at ADD
    /// (used until the watch shows the pod); `unpoliced` says why its mode
    /// cannot be policed, if it cannot.
    pub fn add_local(&mut self, key: ObjectKey, local: LocalPod, known: Option<PodInfo>, unpoliced: Option<String>) {
        let mut info = self.state.pods.get(&key).cloned().or(known).unwrap_or_default();
        info.ips.clone_from(&local.ips);
        match unpoliced {
            Some(why) => {
                self.unpoliced.insert(key.clone(), why);
                self.locals.remove(&key);
            }
            None => {
                self.unpoliced.remove(&key);
                self.locals.insert(key.clone(), local);
            }
        }
        self.chains_dirty = true;
        self.state.pods.insert(key.clone(), info);
        self.sets.update_pod(&self.state, &key);
    }

    /// The pod's sandbox is gone: its rules, and its address in every set.
    pub fn remove_local(&mut self, key: &ObjectKey) {
        let was_local = self.locals.remove(key).is_some() | self.unpoliced.remove(key).is_some();
        if was_local {
            self.chains_dirty = true;
            // the address may go to another pod next: never leave it in a set
            if let Some(pod) = self.state.pods.get_mut(key) {
                pod.ips.clear();
            }
            self.sets.update_pod(&self.state, key);
        }
    }

    /// The policies isolating a pod (either direction).
    pub fn isolating(&self, key: &ObjectKey) -> Vec<String> {
        let Some(pod) = self.state.pods.get(key) else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for direction in [Direction::Ingress, Direction::Egress] {
            for p in self.state.ordered_policies(key, pod, direction) {
                let id = p.id();
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// Why a local pod is selected by a policy the host cannot enforce on it.
    pub fn refusal(&self, key: &ObjectKey) -> Option<String> {
        let why = self.unpoliced.get(key)?;
        let policies = self.isolating(key);
        (!policies.is_empty()).then(|| {
            format!(
                "NetworkPolicy {} selects pod {key}, but {why}: the policy cannot be enforced on it",
                policies.join(", ")
            )
        })
    }

    // ---- the kernel ----

    /// Writes what changed since the last sync, in one transaction.
    pub fn sync(&mut self) -> Result<SyncReport, NftError> {
        let started = Instant::now();
        if !self.ready {
            return Ok(SyncReport {
                unchanged: true,
                ..SyncReport::default()
            });
        }
        let chains_changed = std::mem::take(&mut self.chains_dirty);
        if chains_changed {
            self.chains = ruleset::chains(&self.state, &self.locals);
            self.sets.retain(&self.state, &self.chains.sets);
        }
        let dirty = self.sets.take_dirty();
        // the common case — pods come, go, are relabelled — costs what changed
        let elements_only = match &self.applied {
            Some(have) if !chains_changed => ruleset::element_delta(have, &self.sets, &dirty),
            _ => None,
        };
        let (script, full, want) = match (elements_only, &self.applied) {
            (Some((script, after)), _) => (script, false, Written::Elements(after)),
            (None, Some(have)) => {
                let want = Applied::from_desired(&self.chains, &self.sets);
                (ruleset::delta_script(have, &want, &dirty), false, Written::Table(want))
            }
            (None, None) => {
                let want = Applied::from_desired(&self.chains, &self.sets);
                (ruleset::full_script(&want), true, Written::Table(want))
            }
        };
        let mut report = SyncReport {
            unchanged: script.is_empty(),
            full,
            script_lines: script.lines().count(),
            took: Duration::ZERO,
            nft_took: Duration::ZERO,
        };
        if !script.is_empty() {
            let applying = Instant::now();
            let applied = self.nft.apply(&script);
            report.nft_took = applying.elapsed();
            if let Err(e) = applied {
                self.applied = None;
                self.stats.sync_errors += 1;
                self.stats.last_error = Some(e.to_string());
                tracing::warn!(error = %e, full, "policy sync failed; the next sync writes the whole table");
                return Err(e);
            }
            self.stats.syncs += 1;
            self.stats.last_error = None;
        }
        match want {
            Written::Table(want) => self.applied = Some(want),
            Written::Elements(after) => {
                if let Some(have) = &mut self.applied {
                    for (name, elements) in after {
                        if let Some((_, els)) = have.sets.get_mut(&name) {
                            *els = elements;
                        }
                    }
                }
            }
        }
        report.took = started.elapsed();
        if !script.is_empty() {
            self.stats.sync_duration.observe(report.took);
            self.stats.last_sync_seconds = report.took.as_secs_f64();
        }
        Ok(report)
    }

    /// Removes the table (policy switched off, `terwayd cleanup`).
    pub fn remove_table(&mut self) -> Result<(), NftError> {
        self.applied = None;
        self.nft.remove_table()
    }

    /// Host-side interface name → the local pod behind it.
    pub fn interfaces(&self) -> BTreeMap<String, ObjectKey> {
        self.locals.iter().map(|(k, l)| (l.ifname.clone(), k.clone())).collect()
    }

    pub fn stats(&self) -> PolicyStats {
        let unenforceable = self
            .unpoliced
            .keys()
            .filter_map(|k| self.refusal(k).map(|why| (k.to_string(), why)))
            .collect();
        PolicyStats {
            ready: self.ready,
            policies: self.state.policies.len(),
            pods_known: self.state.pods.len(),
            local_pods: self.locals.len() + self.unpoliced.len(),
            isolated_pods: self
                .chains
                .ingress
                .keys()
                .chain(self.chains.egress.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            rules: self.chains.rule_count(),
            sets: self.sets.content.len(),
            set_elements: self.sets.element_count(),
            unenforceable,
            ..self.stats.clone()
        }
    }

    /// The ruleset the engine would write in full (for tests and `policy dump`).
    pub fn full_script(&mut self) -> String {
        self.chains = ruleset::chains(&self.state, &self.locals);
        self.sets.retain(&self.state, &self.chains.sets);
        ruleset::full_script(&Applied::from_desired(&self.chains, &self.sets))
    }
}
