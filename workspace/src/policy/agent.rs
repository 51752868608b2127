//! The engine as terwayd runs it: shared by the CNI service (a pod's rules
//! are in force before its ADD returns), the Kubernetes watches (facts in)
//! and a sync task (one transaction per burst of changes). Writes to the
//! kernel run on tokio's blocking pool.

use super::engine::{Enforcer, PolicyStats, SyncReport};
use super::model::{ObjectKey, PodInfo};
use super::ruleset::LocalPod;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{watch, Notify};

#[derive(Debug)]
pub struct PolicyAgent {
    enforcer: Arc<Mutex<Enforcer>>,
    /// Policy is on: the watches run and the table is ours to keep.
    active: AtomicBool,
    /// Every watch has listed once since activation.
    ready: watch::Sender<bool>,
    /// Wakes the sync task.
    pub changed: Notify,
}

impl PolicyAgent {
    pub fn new(enforcer: Enforcer) -> Self {
        Self {
            enforcer: Arc::new(Mutex::new(enforcer)),
            active: AtomicBool::new(false),
            ready: watch::channel(false).0,
            changed: Notify::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Records a change (the watches, ADD, DEL); the sync task writes it.
    pub fn update<T>(&self, f: impl FnOnce(&mut Enforcer) -> T) -> T {
        let out = f(&mut self.enforcer.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_one();
        out
    }

    /// Reads the engine's state.
    pub fn read<T>(&self, f: impl FnOnce(&Enforcer) -> T) -> T {
        f(&self.enforcer.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Policy switched on: the watches are starting; nothing is written
    /// until they have all listed ([`PolicyAgent::set_ready`]).
    pub fn activate(&self) {
        self.active.store(true, Ordering::SeqCst);
    }

    /// Policy switched off: the table goes, and what the watches told.
    pub async fn deactivate(&self) -> Result<(), String> {
        self.active.store(false, Ordering::SeqCst);
        self.ready.send_replace(false);
        let enforcer = self.enforcer.clone();
        tokio::task::spawn_blocking(move || {
            let mut e = enforcer.lock().unwrap_or_else(PoisonError::into_inner);
            e.forget_cluster();
            e.remove_table()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Every watch has listed: write the whole table.
    pub fn set_ready(&self) {
        self.update(Enforcer::set_ready);
        self.ready.send_replace(true);
    }

    /// Writes what changed, in one transaction.
    pub async fn sync(&self) -> Result<SyncReport, String> {
        let enforcer = self.enforcer.clone();
        tokio::task::spawn_blocking(move || enforcer.lock().unwrap_or_else(PoisonError::into_inner).sync())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Syncs after every burst of changes, until aborted; a failed sync is
    /// retried (the next one writes the whole table).
    pub async fn sync_loop(self: Arc<Self>) {
        loop {
            self.changed.notified().await;
            if !self.is_active() {
                continue;
            }
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "NetworkPolicy sync failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.changed.notify_one();
            }
        }
    }

    /// A pod this node just wired (ADD): registered, and when policy is on,
    /// its rules are in force before this returns. `Err` when the pod must
    /// not start: the policy state is not loaded within `wait`, a policy
    /// selects it in a mode that cannot be policed, or nft failed.
    pub async fn admit(
        &self,
        key: ObjectKey,
        local: LocalPod,
        known: Option<PodInfo>,
        unpoliced: Option<String>,
        wait: Duration,
    ) -> Result<(), String> {
        self.update(|e| e.add_local(key.clone(), local, known, unpoliced));
        if !self.is_active() {
            return Ok(());
        }
        let mut ready = self.ready.subscribe();
        if tokio::time::timeout(wait, ready.wait_for(|r| *r)).await.is_err() {
            return Err(format!(
                "NetworkPolicy state (policies, namespaces, pods) is not loaded from the API server yet; pod {key} waits so it never runs unpoliced"
            ));
        }
        if let Some(refusal) = self.read(|e| e.refusal(&key)) {
            return Err(refusal);
        }
        self.sync().await.map(|_| ())
    }

    /// A pod's sandbox is gone (DEL, GC): its rules and its address leave the table.
    pub async fn forget(&self, key: &ObjectKey) {
        self.update(|e| e.remove_local(key));
        if self.is_active() {
            if let Err(e) = self.sync().await {
                tracing::warn!(pod = %key, error = %e, "NetworkPolicy sync after DEL failed; retried by the sync task");
            }
        }
    }

    /// Packets the policy dropped per local pod (the drop rules' counters),
    /// read from the kernel; `None` when policy is off or the table cannot be read.
    pub async fn dropped_per_pod(&self) -> Option<BTreeMap<ObjectKey, u64>> {
        if !self.is_active() {
            return None;
        }
        let (nft, interfaces) = self.read(|e| (e.nft().clone(), e.interfaces()));
        let listing = tokio::task::spawn_blocking(move || nft.list_json())
            .await
            .ok()?
            .ok()??;
        let dropped = super::nft::dropped_per_interface(&listing);
        Some(
            interfaces
                .into_iter()
                .filter_map(|(ifname, key)| dropped.get(&ifname).map(|n| (key, *n)))
                .collect(),
        )
    }

    pub fn stats(&self) -> PolicyStats {
        let mut s = self.read(Enforcer::stats);
        s.ready = s.ready && self.is_active();
        s
    }
}
