//! The ledger: sled trees on disk, mirrored in memory. Every change is
//! computed against the mirror under one lock, committed as one record of
//! the write-ahead log (synced when asked), and only then applied to the
//! mirror — so the mirror never shows what the disk does not hold. Sled
//! takes logged records in batches, each batch one transaction across trees.

use crate::model::*;
use crate::wal::{self, Op, Wal};
use crate::LedgerError;
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The on-disk layout version this build writes.
pub const SCHEMA_VERSION: u32 = 2;

const META_SCHEMA: &[u8] = b"schema_version";
const META_INSTANCE: &[u8] = b"instance_id";
const META_WRITTEN_BY: &[u8] = b"written_by";
const META_NEXT_INTENT: &[u8] = b"next_intent_id";
/// The sequence number of the last write-ahead log record sled holds.
const META_WAL_APPLIED: &[u8] = b"wal_applied";
/// Logged commits that wait for sled, at most: replayed at an open, applied
/// in one sled transaction when this many have gathered.
const APPLY_BATCH: usize = 256;

/// Whether a write must be on disk before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync'd before returning: for anything a CNI reply or a cloud call depends on.
    Flush,
    /// Written to the log; on disk with the next durable commit or flush
    /// (or the kernel's writeback). For what the node can work out again.
    Lazy,
}

/// Which ENI an IP is taken from when several have idle IPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EniPreference {
    /// Pack: the ENI with the most bound IPs first (upstream `most_ips`).
    #[default]
    MostUsed,
    /// Spread: the ENI with the fewest bound IPs first (`least_ips`).
    LeastUsed,
}

/// What the ledger holds, as one consistent picture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub enis: BTreeMap<String, EniRecord>,
    pub ips: BTreeMap<IpAddr, IpRecord>,
    pub pods: BTreeMap<String, PodRecord>,
    pub intents: BTreeMap<u64, Intent>,
    pub instance_id: Option<String>,
    /// Records that could not be decoded: (tree, key, error). The rest is readable.
    pub undecodable: Vec<(String, String, String)>,
    /// Per ENI: its idle addresses and how many are bound — kept with `ips`
    /// so a bind does not scan every address.
    by_eni: BTreeMap<String, EniAddresses>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EniAddresses {
    idle: BTreeSet<IpAddr>,
    bound: usize,
}

impl State {
    fn put_ip(&mut self, r: IpRecord) {
        if let Some(old) = self.ips.remove(&r.ip) {
            self.unindex(&old);
        }
        let entry = self.by_eni.entry(r.eni_id.clone()).or_default();
        match r.state {
            IpState::Idle => {
                entry.idle.insert(r.ip);
            }
            IpState::Bound(_) => entry.bound += 1,
            _ => {}
        }
        self.ips.insert(r.ip, r);
    }

    fn del_ip(&mut self, ip: &IpAddr) {
        if let Some(old) = self.ips.remove(ip) {
            self.unindex(&old);
        }
    }

    fn unindex(&mut self, r: &IpRecord) {
        if let Some(entry) = self.by_eni.get_mut(&r.eni_id) {
            match r.state {
                IpState::Idle => {
                    entry.idle.remove(&r.ip);
                }
                IpState::Bound(_) => entry.bound = entry.bound.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// IPs named by unresolved intents: kept out of the pool.
    pub fn ips_held_by_intents(&self) -> BTreeSet<IpAddr> {
        self.intents
            .values()
            .flat_map(|i| i.kind.touched_ips().iter().copied())
            .collect()
    }

    /// ENIs named by unresolved intents.
    pub fn enis_held_by_intents(&self) -> BTreeSet<String> {
        self.intents
            .values()
            .filter_map(|i| i.kind.eni_id().map(str::to_owned))
            .collect()
    }

    pub fn count(&self, eni_id: &str, state: &str) -> usize {
        self.ips
            .values()
            .filter(|r| r.eni_id == eni_id && r.state.name() == state)
            .count()
    }
}

/// A request to give a pod an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRequest {
    pub pod: PodRef,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub settings: PodNetworkSettings,
    /// Dual stack: an IPv6 address too, from the same ENI as the IPv4 one.
    pub ipv6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub ip: IpAddr,
    /// Dual stack: the pod's IPv6 address.
    pub ipv6: Option<IpAddr>,
    pub eni: EniRecord,
    /// The pod had this address already (a repeated ADD, or a new sandbox of the same pod).
    pub existing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Released {
    pub ips: Vec<IpAddr>,
    /// The ledger's container id differed: a stale DEL, nothing was released.
    pub stale: bool,
    pub eni_id: Option<String>,
}

/// One change to one record.
#[derive(Debug, Clone)]
enum Change {
    PutEni(EniRecord),
    DelEni(String),
    PutIp(IpRecord),
    DelIp(IpAddr),
    PutPod(PodRecord),
    DelPod(String),
    PutIntent(Intent),
    DelIntent(u64),
    NextIntentId(u64),
}

#[derive(Debug)]
struct Trees {
    enis: sled::Tree,
    ips: sled::Tree,
    pods: sled::Tree,
    intents: sled::Tree,
    meta: sled::Tree,
    quarantine: sled::Tree,
}

impl Trees {
    /// The tree a write-ahead log op names.
    fn numbered(&self, n: u8) -> &sled::Tree {
        match n {
            0 => &self.enis,
            1 => &self.ips,
            2 => &self.pods,
            3 => &self.intents,
            _ => &self.meta,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    next_intent_id: u64,
    /// The write-ahead log record the next commit writes.
    next_seq: u64,
    /// Logged commits sled does not hold yet, oldest first.
    unapplied: Vec<(u64, Vec<Op>)>,
}

/// The ledger. Open one per process; sled refuses a second opener.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    db: sled::Db,
    trees: Trees,
    inner: Mutex<Inner>,
    /// Commits logged so far (durable or not).
    written: AtomicU64,
    /// Group commit: one sync of the log makes every commit before it durable.
    flushes: FlushGate,
    /// Commits are durable once synced here (see `wal`).
    wal: Arc<Wal>,
    /// Syncs of the log made by `durable` so far.
    syncs: AtomicU64,
}

/// Writers waiting for durability share log syncs: the first to find none
/// under way leads one covering every commit so far; the others wait for
/// it (or the next), so durable operations per second grow with the number
/// of writers while a lone writer still syncs once per commit. The leader
/// does not linger for writers still committing: with the log's sync as
/// short as it is, the next sync starts as soon as this one ends, and
/// waiting measured no better.
#[derive(Debug, Default)]
struct FlushGate {
    /// (commits known durable, a flush is under way)
    state: Mutex<(u64, bool)>,
    done: Condvar,
}

pub(crate) fn storage(path: &Path, op: &str, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Storage {
        path: path.to_path_buf(),
        op: op.to_owned(),
        message: e.to_string(),
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records are plain data; serde_json cannot fail on them.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn ip_key(ip: &IpAddr) -> Vec<u8> {
    ip.to_string().into_bytes()
}

/// Options for [`Ledger::open_with`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The instance this node is; a ledger written for another instance is refused.
    pub instance_id: Option<String>,
    /// Fail instead of creating a missing ledger.
    pub must_exist: bool,
    /// Inspect only: write nothing (no migration, no meta update).
    pub read_only: bool,
    /// How long to wait for the lock of a ledger another process (or a
    /// closing handle whose background threads are finishing) still holds.
    /// `None`: the default, 2 s.
    pub lock_wait: Option<Duration>,
}

const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(2);

impl Ledger {
    /// Opens (creating if needed) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Self::open_with(path, &OpenOptions::default())
    }

    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Self, LedgerError> {
        if opts.must_exist && !path.join("db").exists() && !path.join("conf").exists() {
            return Err(LedgerError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let deadline = std::time::Instant::now() + opts.lock_wait.unwrap_or(DEFAULT_LOCK_WAIT);
        let db = loop {
            match open_db(path) {
                Err(LedgerError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| storage(path, &format!("open tree {name}"), e))
        };
        let trees = Trees {
            enis: tree("enis")?,
            ips: tree("ips")?,
            pods: tree("pods")?,
            intents: tree("intents")?,
            meta: tree("meta")?,
            quarantine: tree("quarantine")?,
        };
        let (wal, next_seq) = recover_wal(path, &db, &trees)?;
        let ledger = Self {
            path: path.to_path_buf(),
            db,
            trees,
            inner: Mutex::new(Inner {
                state: State::default(),
                next_intent_id: 1,
                next_seq,
                unapplied: Vec::new(),
            }),
            written: AtomicU64::new(0),
            flushes: FlushGate::default(),
            wal,
            syncs: AtomicU64::new(0),
        };
        ledger.check_schema(opts)?;
        ledger.load()?;
        Ok(ledger)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens a read-only copy of a ledger another process may hold open (sled
    /// recovers a copy like a crash image); the copy lives as long as the
    /// returned directory.
    pub fn open_snapshot(path: &Path) -> Result<(Self, tempfile::TempDir), LedgerError> {
        let dir = tempfile::tempdir().map_err(|e| storage(path, "create a snapshot directory", e))?;
        copy_dir(path, dir.path()).map_err(|e| storage(path, "copy for a snapshot", e))?;
        let opts = OpenOptions {
            must_exist: true,
            read_only: true,
            lock_wait: Some(Duration::ZERO),
            ..OpenOptions::default()
        };
        let ledger = Self::open_with(dir.path(), &opts)?;
        Ok((ledger, dir))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<String>, LedgerError> {
        let v = self
            .trees
            .meta
            .get(key)
            .map_err(|e| storage(&self.path, "read meta", e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn meta_put(&self, key: &[u8], value: &str) -> Result<(), LedgerError> {
        self.trees
            .meta
            .insert(key, value.as_bytes())
            .map_err(|e| storage(&self.path, "write meta", e))?;
        Ok(())
    }

    fn check_schema(&self, opts: &OpenOptions) -> Result<(), LedgerError> {
        let found = match self.meta_get(META_SCHEMA)? {
            Some(v) => v.parse::<u32>().map_err(|_| LedgerError::Corrupt {
                path: self.path.clone(),
                what: format!("meta/schema_version holds {v:?}, not a number"),
            })?,
            None if self.trees.ips.is_empty() && self.trees.enis.is_empty() && self.trees.pods.is_empty() => {
                if !opts.read_only {
                    self.meta_put(META_SCHEMA, &SCHEMA_VERSION.to_string())?;
                }
                SCHEMA_VERSION
            }
            None => 1, // v1 ledgers predate the meta record
        };
        if found > SCHEMA_VERSION {
            return Err(LedgerError::NewerSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION && opts.read_only {
            return Err(LedgerError::Corrupt {
                path: self.path.clone(),
                what: format!("schema version {found} needs a migration to {SCHEMA_VERSION}; open it read-write once"),
            });
        }
        if found < SCHEMA_VERSION {
            crate::migrate::migrate(&self.path, &self.trees.enis, found)?;
            self.meta_put(META_SCHEMA, &SCHEMA_VERSION.to_string())?;
            tracing::info!(path = %self.path.display(), from = found, to = SCHEMA_VERSION, "ledger migrated");
        }
        if opts.read_only {
            if let (Some(stored), Some(wanted)) = (self.meta_get(META_INSTANCE)?, &opts.instance_id) {
                if &stored != wanted {
                    return Err(self.wrong_instance(stored, wanted));
                }
            }
            return Ok(());
        }
        if let Some(wanted) = &opts.instance_id {
            self.claim_instance(wanted)?;
        }
        self.meta_put(META_WRITTEN_BY, env!("CARGO_PKG_VERSION"))?;
        self.db.flush().map_err(|e| storage(&self.path, "flush", e))?;
        Ok(())
    }

    fn load(&self) -> Result<(), LedgerError> {
        let (state, next) = self.read_state()?;
        let mut inner = self.lock();
        inner.state = state;
        inner.next_intent_id = next;
        Ok(())
    }

    /// Reads every tree from disk (without touching the mirror).
    fn read_state(&self) -> Result<(State, u64), LedgerError> {
        let mut state = State {
            instance_id: self.meta_get(META_INSTANCE)?,
            ..State::default()
        };
        let path = &self.path;
        let mut bad = Vec::new();
        fn each<T: DeserializeOwned>(
            path: &Path,
            tree: &sled::Tree,
            name: &str,
            bad: &mut Vec<(String, String, String)>,
            mut put: impl FnMut(T),
        ) -> Result<(), LedgerError> {
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| storage(path, &format!("read {name}"), e))?;
                match decode::<T>(&v) {
                    Ok(record) => put(record),
                    Err(e) => bad.push((name.to_owned(), String::from_utf8_lossy(&k).into_owned(), e)),
                }
            }
            Ok(())
        }
        each(path, &self.trees.enis, "enis", &mut bad, |r: EniRecord| {
            state.enis.insert(r.id.clone(), r);
        })?;
        each(path, &self.trees.ips, "ips", &mut bad, |r: IpRecord| {
            state.put_ip(r);
        })?;
        each(path, &self.trees.pods, "pods", &mut bad, |r: PodRecord| {
            state.pods.insert(r.pod.key(), r);
        })?;
        each(path, &self.trees.intents, "intents", &mut bad, |r: Intent| {
            state.intents.insert(r.id, r);
        })?;
        state.undecodable = bad;
        let next = self
            .meta_get(META_NEXT_INTENT)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let next = next.max(state.intents.keys().next_back().map_or(1, |id| id + 1));
        Ok((state, next))
    }

    /// Returns once every commit made so far is on disk, leading a flush or
    /// joining one (see [`FlushGate`]).
    fn durable(&self) -> Result<(), LedgerError> {
        let target = self.written.load(Ordering::SeqCst);
        let gate = &self.flushes;
        let mut state = gate.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.0 >= target {
                return Ok(());
            }
            if state.1 {
                state = gate.done.wait(state).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.1 = true;
            drop(state);
            let covers = self.written.load(Ordering::SeqCst);
            let flushed = self.wal.sync();
            self.syncs.fetch_add(1, Ordering::Relaxed);
            state = gate.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.1 = false;
            if flushed.is_ok() {
                state.0 = state.0.max(covers);
            }
            gate.done.notify_all();
            flushed.map_err(|e| storage(&self.path, "flush", e))?;
        }
    }

    /// Runs `write` (which commits without syncing); then, for
    /// [`Durability::Flush`], waits for a sync after the ledger's lock is let
    /// go, so concurrent binds and releases share it.
    fn group_committed<T>(
        &self,
        durability: Durability,
        write: impl FnOnce() -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let out = write()?;
        if durability == Durability::Flush {
            self.durable()?;
        }
        Ok(out)
    }

    /// Applies what sled lacks, starts the next write-ahead log, flushes
    /// sled (which then holds everything the full log recorded) and deletes
    /// the full one; under the ledger's lock, once every few thousand
    /// commits. The flush is not left to a background thread: sled 0.34 can
    /// deadlock when an explicit flush runs beside heavy writing (sled issue
    /// #1412; the retirement test hit it). A log left by a failure here is
    /// replayed (and skipped, sled holding it) at the next open.
    fn retire_wal(&self, inner: &mut Inner) -> Result<(), LedgerError> {
        self.apply_logged(inner)?;
        let retired = self
            .wal
            .rotate()
            .map_err(|e| storage(&self.path, "start a new write-ahead log", e))?;
        self.db.flush().map_err(|e| storage(&self.path, "flush", e))?;
        std::fs::remove_file(&retired).map_err(|e| storage(&self.path, "delete a retired write-ahead log", e))
    }

    /// How many times waiting writers have synced the log, for the benchmark
    /// to show how many operations share one.
    #[doc(hidden)]
    pub fn durable_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Test support: the write-ahead log file and how many of its bytes are
    /// known to be on disk (a power cut keeps those and loses the rest).
    #[doc(hidden)]
    pub fn wal_synced(&self) -> (PathBuf, u64) {
        self.wal.synced()
    }

    /// Commits `changes`: appends them to the write-ahead log as one record
    /// (the commit point: recovery replays it), mirrors them, and queues them
    /// for sled, which takes them in batches (see [`Self::apply_logged`]).
    fn commit(&self, inner: &mut Inner, changes: Vec<Change>, durability: Durability) -> Result<(), LedgerError> {
        if changes.is_empty() {
            return Ok(());
        }
        let encoded: Vec<Op> = changes
            .iter()
            .map(|c| match c {
                Change::PutEni(r) => (0, r.id.as_bytes().to_vec(), Some(encode(r))),
                Change::DelEni(id) => (0, id.as_bytes().to_vec(), None),
                Change::PutIp(r) => (1, ip_key(&r.ip), Some(encode(r))),
                Change::DelIp(ip) => (1, ip_key(ip), None),
                Change::PutPod(r) => (2, r.pod.key().into_bytes(), Some(encode(r))),
                Change::DelPod(k) => (2, k.as_bytes().to_vec(), None),
                Change::PutIntent(r) => (3, r.id.to_be_bytes().to_vec(), Some(encode(r))),
                Change::DelIntent(id) => (3, id.to_be_bytes().to_vec(), None),
                Change::NextIntentId(n) => (4, META_NEXT_INTENT.to_vec(), Some(n.to_string().into_bytes())),
            })
            .collect();
        let seq = inner.next_seq;
        self.wal
            .append(seq, &encoded)
            .map_err(|e| storage(&self.path, "append to the write-ahead log", e))?;
        inner.next_seq = seq + 1;
        inner.unapplied.push((seq, encoded));
        let s = &mut inner.state;
        for c in changes {
            match c {
                Change::PutEni(r) => {
                    s.enis.insert(r.id.clone(), r);
                }
                Change::DelEni(id) => {
                    s.enis.remove(&id);
                }
                Change::PutIp(r) => s.put_ip(r),
                Change::DelIp(ip) => s.del_ip(&ip),
                Change::PutPod(r) => {
                    s.pods.insert(r.pod.key(), r);
                }
                Change::DelPod(k) => {
                    s.pods.remove(&k);
                }
                Change::PutIntent(r) => {
                    s.intents.insert(r.id, r);
                }
                Change::DelIntent(id) => {
                    s.intents.remove(&id);
                }
                Change::NextIntentId(n) => inner.next_intent_id = n,
            }
        }
        self.written.fetch_add(1, Ordering::SeqCst);
        // Upkeep. The commit is in the log whatever happens here, so a
        // failure is a warning: what sled lacks stays queued (and in the
        // log, which is not retired until sled holds it all).
        if inner.unapplied.len() >= APPLY_BATCH {
            if let Err(error) = self.apply_logged(inner) {
                tracing::warn!(%error, "ledger: applying logged commits to sled failed; they stay in the write-ahead log");
            }
        }
        if self.wal.wants_spare() {
            let log = Arc::clone(&self.wal);
            std::thread::spawn(move || {
                if let Err(error) = log.prepare_spare() {
                    tracing::warn!(%error, "ledger: making a spare write-ahead log failed; the next rotation makes a short one");
                }
            });
        }
        if self.wal.full() {
            if let Err(error) = self.retire_wal(inner) {
                tracing::warn!(%error, "ledger: retiring a full write-ahead log failed; it grows until the next try");
            }
        }
        if durability == Durability::Flush {
            self.durable()?;
        }
        Ok(())
    }

    /// Applies the logged commits sled lacks, in one sled transaction that
    /// also records the last one's sequence number (`meta/wal_applied`), so
    /// recovery replays exactly the records after it. Batching is what makes
    /// the log pay: a sled transaction costs far more than a log append, and
    /// hundreds of commits share one.
    fn apply_logged(&self, inner: &mut Inner) -> Result<(), LedgerError> {
        let Some(&(last, _)) = inner.unapplied.last() else {
            return Ok(());
        };
        let applied = last.to_string().into_bytes();
        let t = &self.trees;
        let result: Result<(), TransactionError<()>> =
            (&t.enis, &t.ips, &t.pods, &t.intents, &t.meta).transaction(|(enis, ips, pods, intents, meta)| {
                for (tree, key, value) in inner.unapplied.iter().flat_map(|(_, ops)| ops) {
                    let tree = match tree {
                        0 => enis,
                        1 => ips,
                        2 => pods,
                        3 => intents,
                        _ => meta,
                    };
                    match value {
                        Some(v) => tree.insert(key.as_slice(), v.as_slice())?,
                        None => tree.remove(key.as_slice())?,
                    };
                }
                meta.insert(META_WAL_APPLIED, applied.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| storage(&self.path, "apply logged commits", format!("{e:?}")))?;
        inner.unapplied.clear();
        Ok(())
    }

    /// A value the node keeps between runs (its identity, its capacity), under `node.<key>`.
    pub fn node_fact<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LedgerError> {
        let Some(text) = self.meta_get(format!("node.{key}").as_bytes())? else {
            return Ok(None);
        };
        Ok(decode(text.as_bytes()).ok())
    }

    /// Checks that the ledger belongs to instance `id` (a disk cloned from
    /// another instance must not hand out that instance's addresses) and
    /// records it as the owner when none is recorded yet.
    pub fn claim_instance(&self, id: &str) -> Result<(), LedgerError> {
        match self.meta_get(META_INSTANCE)? {
            Some(stored) if stored != id => Err(self.wrong_instance(stored, id)),
            Some(_) => Ok(()),
            None => {
                self.meta_put(META_INSTANCE, id)?;
                self.lock().state.instance_id = Some(id.to_owned());
                self.flush()
            }
        }
    }

    fn wrong_instance(&self, stored: String, wanted: &str) -> LedgerError {
        LedgerError::WrongInstance {
            path: self.path.clone(),
            stored,
            wanted: wanted.to_owned(),
        }
    }

    /// Records a node fact, flushed.
    pub fn set_node_fact<T: Serialize>(&self, key: &str, value: &T) -> Result<(), LedgerError> {
        let text = String::from_utf8(encode(value)).unwrap_or_default();
        self.meta_put(format!("node.{key}").as_bytes(), &text)?;
        self.flush()
    }

    /// Writes everything to disk now, into sled itself.
    pub fn flush(&self) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        self.apply_logged(&mut inner)?;
        self.db.flush().map(|_| ()).map_err(|e| storage(&self.path, "flush", e))
    }

    /// A consistent copy of everything the ledger holds.
    pub fn snapshot(&self) -> State {
        self.lock().state.clone()
    }

    pub fn pod(&self, pod: &PodRef) -> Option<PodRecord> {
        self.lock().state.pods.get(&pod.key()).cloned()
    }

    /// ENIs that serve one pod whole (taken or idle).
    pub fn exclusive_enis(&self) -> usize {
        self.lock().state.enis.values().filter(|e| e.exclusive).count()
    }

    /// One ENI's record, without copying the rest of the ledger.
    pub fn eni(&self, eni_id: &str) -> Option<EniRecord> {
        self.lock().state.enis.get(eni_id).cloned()
    }

    /// The ENI an address is on, without copying the rest of the ledger.
    pub fn eni_of_ip(&self, ip: &IpAddr) -> Option<EniRecord> {
        let inner = self.lock();
        let eni_id = &inner.state.ips.get(ip)?.eni_id;
        inner.state.enis.get(eni_id).cloned()
    }

    // ---- pods ----

    /// Gives the pod an idle address: the same one again for the same pod
    /// (a repeated ADD, or a new sandbox of the same pod).
    pub fn bind(&self, req: &BindRequest, pref: EniPreference, durability: Durability) -> Result<Bound, LedgerError> {
        self.group_committed(durability, || self.bind_written(req, pref))
    }

    fn bind_written(&self, req: &BindRequest, pref: EniPreference) -> Result<Bound, LedgerError> {
        let mut inner = self.lock();
        let s = &inner.state;
        if let Some(existing) = s.pods.get(&req.pod.key()) {
            let ip = *existing.ips.first().ok_or_else(|| LedgerError::Corrupt {
                path: self.path.clone(),
                what: format!("pods/{} has no IP", req.pod.key()),
            })?;
            let record = s.ips.get(&ip).ok_or_else(|| LedgerError::Corrupt {
                path: self.path.clone(),
                what: format!("pods/{} names {ip}, which is not in ips", req.pod.key()),
            })?;
            let eni = s
                .enis
                .get(&record.eni_id)
                .cloned()
                .ok_or_else(|| LedgerError::Corrupt {
                    path: self.path.clone(),
                    what: format!("ips/{ip} is on unknown ENI {}", record.eni_id),
                })?;
            let ipv6 = existing.ips.iter().copied().find(IpAddr::is_ipv6);
            if existing.container_id == req.container_id && existing.pod.uid == req.pod.uid {
                return Ok(Bound {
                    ip,
                    ipv6,
                    eni,
                    existing: true,
                });
            }
            // a new sandbox (or incarnation) of the same pod keeps its address
            let binding = Binding {
                pod: req.pod.clone(),
                container_id: req.container_id.clone(),
                netns: req.netns.clone(),
                ifname: req.ifname.clone(),
            };
            let mut changes: Vec<Change> = existing
                .ips
                .iter()
                .filter_map(|ip| s.ips.get(ip))
                .map(|r| {
                    Change::PutIp(IpRecord {
                        state: IpState::Bound(binding.clone()),
                        ..r.clone()
                    })
                })
                .collect();
            changes.push(Change::PutPod(PodRecord {
                pod: req.pod.clone(),
                container_id: req.container_id.clone(),
                netns: req.netns.clone(),
                ifname: req.ifname.clone(),
                settings: req.settings.clone(),
                bound_at: now_millis(),
                ..existing.clone()
            }));
            self.commit(&mut inner, changes, Durability::Lazy)?;
            return Ok(Bound {
                ip,
                ipv6,
                eni,
                existing: true,
            });
        }
        let held = s.ips_held_by_intents();
        let usable = s
            .by_eni
            .iter()
            .filter(|(id, _)| {
                s.enis.get(*id).is_some_and(|e| {
                    // dual stack: the pod's IPv6 route needs the ENI's IPv6 gateway
                    e.status == EniStatus::InUse && e.owner.is_none() && !e.exclusive && (!req.ipv6 || e.ipv6.is_some())
                })
            })
            .filter_map(|(id, a)| {
                let free = |v6: bool| a.idle.iter().find(|ip| ip.is_ipv6() == v6 && !held.contains(ip));
                // dual stack: only an ENI with an idle address of each family
                let v6 = if req.ipv6 { Some(*free(true)?) } else { None };
                free(false).map(|ip| (id.as_str(), a.bound, *ip, v6))
            });
        let Some((_, _, best_ip, best_v6)) = usable.min_by_key(|(id, bound, ip, _)| {
            let order = match pref {
                EniPreference::MostUsed => usize::MAX - bound,
                EniPreference::LeastUsed => *bound,
            };
            (order, *id, *ip)
        }) else {
            let cooling = s
                .ips
                .values()
                .filter(|r| matches!(r.state, IpState::Cooling { .. }))
                .count();
            return Err(LedgerError::NoIdleIp { cooling });
        };
        let best = &s.ips[&best_ip];
        let chosen = best.clone();
        let eni = s.enis[&chosen.eni_id].clone();
        let binding = Binding {
            pod: req.pod.clone(),
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
        };
        let mut ips = vec![chosen.ip];
        let mut changes = vec![Change::PutIp(IpRecord {
            state: IpState::Bound(binding.clone()),
            ..chosen.clone()
        })];
        if let Some(v6) = best_v6 {
            ips.push(v6);
            changes.push(Change::PutIp(IpRecord {
                state: IpState::Bound(binding),
                ..s.ips[&v6].clone()
            }));
        }
        changes.extend([Change::PutPod(PodRecord {
            pod: req.pod.clone(),
            container_id: req.container_id.clone(),
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            ips,
            eni_id: None,
            settings: req.settings.clone(),
            bound_at: now_millis(),
        })]);
        self.commit(&mut inner, changes, Durability::Lazy)?;
        Ok(Bound {
            ip: chosen.ip,
            ipv6: best_v6,
            eni,
            existing: false,
        })
    }

    /// Gives the pod a whole idle ENI (its primary IP): one marked
    /// [`exclusive`](EniRecord::exclusive), or (`any_eni`, a node in
    /// exclusive-ENI mode) any ENI no pod holds an address of.
    pub fn reserve_eni(&self, req: &BindRequest, any_eni: bool, durability: Durability) -> Result<Bound, LedgerError> {
        self.group_committed(durability, || self.reserve_eni_written(req, any_eni))
    }

    fn reserve_eni_written(&self, req: &BindRequest, any_eni: bool) -> Result<Bound, LedgerError> {
        let mut inner = self.lock();
        let s = &inner.state;
        if let Some(existing) = s.pods.get(&req.pod.key()) {
            let eni_id = existing.eni_id.clone().ok_or_else(|| LedgerError::Conflict {
                what: format!("pod {} holds a shared-ENI address, not an ENI", req.pod),
            })?;
            let eni = s.enis.get(&eni_id).cloned().ok_or_else(|| LedgerError::Corrupt {
                path: self.path.clone(),
                what: format!("pods/{} names unknown ENI {eni_id}", req.pod.key()),
            })?;
            let mut changes = Vec::new();
            if existing.container_id != req.container_id {
                changes.push(Change::PutPod(PodRecord {
                    container_id: req.container_id.clone(),
                    netns: req.netns.clone(),
                    ifname: req.ifname.clone(),
                    pod: req.pod.clone(),
                    ..existing.clone()
                }));
                changes.push(Change::PutEni(EniRecord {
                    owner: Some(req.pod.clone()),
                    ..eni.clone()
                }));
            }
            let ip = eni.primary_ip;
            self.commit(&mut inner, changes, Durability::Lazy)?;
            return Ok(Bound {
                ip,
                ipv6: None,
                eni,
                existing: true,
            });
        }
        let held = s.enis_held_by_intents();
        let free = s
            .enis
            .values()
            .find(|e| {
                e.status == EniStatus::InUse
                    && e.owner.is_none()
                    && (e.exclusive || any_eni)
                    && !held.contains(&e.id)
                    && s.count(&e.id, "bound") == 0
            })
            .cloned()
            .ok_or(LedgerError::NoIdleEni)?;
        let eni = EniRecord {
            owner: Some(req.pod.clone()),
            ..free
        };
        let changes = vec![
            Change::PutEni(eni.clone()),
            Change::PutPod(PodRecord {
                pod: req.pod.clone(),
                container_id: req.container_id.clone(),
                netns: req.netns.clone(),
                ifname: req.ifname.clone(),
                ips: vec![eni.primary_ip],
                eni_id: Some(eni.id.clone()),
                settings: PodNetworkSettings {
                    exclusive_eni: true,
                    ..req.settings.clone()
                },
                bound_at: now_millis(),
            }),
        ];
        self.commit(&mut inner, changes, Durability::Lazy)?;
        Ok(Bound {
            ip: eni.primary_ip,
            ipv6: None,
            eni,
            existing: false,
        })
    }

    /// Releases the pod's addresses to Cooling (Idle right away with a zero
    /// cooldown). `container_id` guards against a stale DEL of an older sandbox.
    pub fn release(
        &self,
        pod: &PodRef,
        container_id: Option<&str>,
        cooldown: Duration,
        durability: Durability,
    ) -> Result<Released, LedgerError> {
        self.group_committed(durability, || self.release_written(pod, container_id, cooldown))
    }

    fn release_written(
        &self,
        pod: &PodRef,
        container_id: Option<&str>,
        cooldown: Duration,
    ) -> Result<Released, LedgerError> {
        let mut inner = self.lock();
        let s = &inner.state;
        let Some(record) = s.pods.get(&pod.key()).cloned() else {
            return Ok(Released::default());
        };
        if container_id.is_some_and(|c| c != record.container_id) {
            return Ok(Released {
                stale: true,
                ..Released::default()
            });
        }
        let next = if cooldown.is_zero() {
            IpState::Idle
        } else {
            IpState::Cooling {
                until: now_millis() + cooldown.as_millis() as u64,
            }
        };
        let mut changes = vec![Change::DelPod(pod.key())];
        if let Some(eni_id) = &record.eni_id {
            if let Some(eni) = s.enis.get(eni_id) {
                changes.push(Change::PutEni(EniRecord {
                    owner: None,
                    ..eni.clone()
                }));
            }
        } else {
            for ip in &record.ips {
                if let Some(r) = s.ips.get(ip) {
                    changes.push(Change::PutIp(IpRecord {
                        state: next.clone(),
                        ..r.clone()
                    }));
                }
            }
        }
        let released = Released {
            ips: record.ips.clone(),
            stale: false,
            eni_id: record.eni_id.clone(),
        };
        self.commit(&mut inner, changes, Durability::Lazy)?;
        Ok(released)
    }

    /// When the next cooling address becomes usable, if any cools.
    pub fn next_cooling_due(&self) -> Option<UnixMillis> {
        self.lock()
            .state
            .ips
            .values()
            .filter_map(|r| match r.state {
                IpState::Cooling { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Cooling addresses whose time is up become Idle; returns how many.
    pub fn promote_cooled(&self, now: UnixMillis, durability: Durability) -> Result<usize, LedgerError> {
        let mut inner = self.lock();
        let changes: Vec<Change> = inner
            .state
            .ips
            .values()
            .filter(|r| matches!(r.state, IpState::Cooling { until } if until <= now))
            .map(|r| {
                Change::PutIp(IpRecord {
                    state: IpState::Idle,
                    ..r.clone()
                })
            })
            .collect();
        let n = changes.len();
        self.commit(&mut inner, changes, durability)?;
        Ok(n)
    }

    // ---- ENIs and addresses the cloud confirmed ----

    /// Records an ENI the cloud shows attached (new, or refreshed: status and
    /// owner are kept for a known ENI).
    pub fn adopt_eni(&self, eni: EniRecord, durability: Durability) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let record = match inner.state.enis.get(&eni.id) {
            Some(known) => EniRecord {
                status: known.status,
                owner: known.owner.clone(),
                created_by_us: known.created_by_us || eni.created_by_us,
                exclusive: known.exclusive || eni.exclusive,
                ..eni
            },
            None => eni,
        };
        if inner.state.enis.get(&record.id) == Some(&record) {
            return Ok(());
        }
        self.commit(&mut inner, vec![Change::PutEni(record)], durability)
    }

    /// Records addresses the cloud confirmed on `eni_id` as Idle; known ones
    /// keep their state. Returns the new ones.
    pub fn adopt_ips(&self, eni_id: &str, ips: &[IpAddr], durability: Durability) -> Result<Vec<IpAddr>, LedgerError> {
        let mut inner = self.lock();
        if !inner.state.enis.contains_key(eni_id) {
            return Err(LedgerError::UnknownEni { eni_id: eni_id.into() });
        }
        let mut fresh = Vec::new();
        let mut changes = Vec::new();
        for ip in ips {
            match inner.state.ips.get(ip) {
                Some(r) if r.eni_id == eni_id => {}
                Some(r) => {
                    return Err(LedgerError::Conflict {
                        what: format!("{ip} is on {} in the ledger, not {eni_id}", r.eni_id),
                    });
                }
                None => {
                    fresh.push(*ip);
                    changes.push(Change::PutIp(IpRecord {
                        ip: *ip,
                        eni_id: eni_id.into(),
                        state: IpState::Idle,
                    }));
                }
            }
        }
        self.commit(&mut inner, changes, durability)?;
        Ok(fresh)
    }

    /// Records addresses on `eni_id` that pods wired by someone else hold
    /// (a node taken over from upstream Terway) as bound to `holders`: new
    /// ones, and idle or cooling ones, which the pool must not hand out.
    /// Addresses already bound keep their pod. Returns those now held.
    pub fn hold_for_pods(
        &self,
        eni_id: &str,
        holders: &[(IpAddr, BindRequest)],
        durability: Durability,
    ) -> Result<Vec<IpAddr>, LedgerError> {
        let mut inner = self.lock();
        let s = &inner.state;
        if !s.enis.contains_key(eni_id) {
            return Err(LedgerError::UnknownEni { eni_id: eni_id.into() });
        }
        let mut held = Vec::new();
        let mut changes = Vec::new();
        // a holder's addresses (one per family) join one pod record, also
        // when one was held earlier
        let mut pods: BTreeMap<String, PodRecord> = BTreeMap::new();
        for (ip, req) in holders {
            match s.ips.get(ip) {
                Some(r) if r.eni_id != eni_id => {
                    return Err(LedgerError::Conflict {
                        what: format!("{ip} is on {} in the ledger, not {eni_id}", r.eni_id),
                    });
                }
                Some(IpRecord {
                    state: IpState::Bound(_) | IpState::Releasing,
                    ..
                }) => continue,
                _ => {}
            }
            let record = pods.entry(req.pod.key()).or_insert_with(|| {
                s.pods.get(&req.pod.key()).cloned().unwrap_or_else(|| PodRecord {
                    pod: req.pod.clone(),
                    container_id: req.container_id.clone(),
                    netns: req.netns.clone(),
                    ifname: req.ifname.clone(),
                    ips: Vec::new(),
                    eni_id: None,
                    settings: req.settings.clone(),
                    bound_at: now_millis(),
                })
            });
            if record.container_id != req.container_id {
                continue; // the key is another attachment's
            }
            record.ips.push(*ip);
            record.ips.sort(); // IPv4 first, as every pod record
            changes.push(Change::PutIp(IpRecord {
                ip: *ip,
                eni_id: eni_id.into(),
                state: IpState::Bound(Binding {
                    pod: record.pod.clone(),
                    container_id: record.container_id.clone(),
                    netns: record.netns.clone(),
                    ifname: record.ifname.clone(),
                }),
            }));
            held.push(*ip);
        }
        // only records that gained an address are written
        changes.extend(
            pods.into_values()
                .filter(|p| !p.ips.is_empty() && s.pods.get(&p.pod.key()) != Some(p))
                .map(Change::PutPod),
        );
        self.commit(&mut inner, changes, durability)?;
        Ok(held)
    }

    /// Idle addresses among `ips` become Releasing (others are left alone); returns those.
    pub fn mark_releasing(&self, ips: &[IpAddr], durability: Durability) -> Result<Vec<IpAddr>, LedgerError> {
        let mut inner = self.lock();
        let mut marked = Vec::new();
        let mut changes = Vec::new();
        for ip in ips {
            if let Some(r) = inner.state.ips.get(ip).filter(|r| r.state == IpState::Idle) {
                marked.push(*ip);
                changes.push(Change::PutIp(IpRecord {
                    state: IpState::Releasing,
                    ..r.clone()
                }));
            }
        }
        self.commit(&mut inner, changes, durability)?;
        Ok(marked)
    }

    /// Forgets addresses the cloud no longer has. Bound ones are refused.
    pub fn remove_ips(&self, ips: &[IpAddr], durability: Durability) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let mut changes = Vec::new();
        for ip in ips {
            match inner.state.ips.get(ip) {
                Some(IpRecord {
                    state: IpState::Bound(b),
                    ..
                }) => {
                    return Err(LedgerError::Conflict {
                        what: format!("{ip} is bound to pod {}", b.pod),
                    });
                }
                Some(_) => changes.push(Change::DelIp(*ip)),
                None => {}
            }
        }
        self.commit(&mut inner, changes, durability)
    }

    pub fn set_eni_status(&self, eni_id: &str, status: EniStatus, durability: Durability) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let eni = inner
            .state
            .enis
            .get(eni_id)
            .cloned()
            .ok_or_else(|| LedgerError::UnknownEni { eni_id: eni_id.into() })?;
        self.commit(
            &mut inner,
            vec![Change::PutEni(EniRecord { status, ..eni })],
            durability,
        )
    }

    /// Takes a whole ENI out of service (status `Draining`, so no bind picks
    /// it) if, at this moment, every address on it is idle, none is touched
    /// by an unresolved intent and no pod owns it. Returns whether it did:
    /// checking and marking under one lock is what keeps a concurrent bind
    /// from landing on an ENI about to be detached.
    pub fn drain_eni_if_idle(&self, eni_id: &str, durability: Durability) -> Result<bool, LedgerError> {
        let mut inner = self.lock();
        let s = &inner.state;
        let Some(eni) = s.enis.get(eni_id) else {
            return Err(LedgerError::UnknownEni { eni_id: eni_id.into() });
        };
        let held = s.ips_held_by_intents();
        let all_idle = s
            .ips
            .values()
            .filter(|r| r.eni_id == eni_id)
            .all(|r| r.state == IpState::Idle && !held.contains(&r.ip));
        if eni.status != EniStatus::InUse
            || eni.owner.is_some()
            || !all_idle
            || s.enis_held_by_intents().contains(eni_id)
        {
            return Ok(false);
        }
        let eni = EniRecord {
            status: EniStatus::Draining,
            ..eni.clone()
        };
        self.commit(&mut inner, vec![Change::PutEni(eni)], durability)?;
        Ok(true)
    }

    /// Forgets an ENI and its addresses. Refused while a pod uses it.
    pub fn remove_eni(&self, eni_id: &str, durability: Durability) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        let s = &inner.state;
        if let Some(owner) = s.enis.get(eni_id).and_then(|e| e.owner.as_ref()) {
            return Err(LedgerError::Conflict {
                what: format!("ENI {eni_id} is reserved for pod {owner}"),
            });
        }
        let mut changes = Vec::new();
        for r in s.ips.values().filter(|r| r.eni_id == eni_id) {
            if let IpState::Bound(b) = &r.state {
                return Err(LedgerError::Conflict {
                    what: format!("{} on ENI {eni_id} is bound to pod {}", r.ip, b.pod),
                });
            }
            changes.push(Change::DelIp(r.ip));
        }
        if s.enis.contains_key(eni_id) {
            changes.push(Change::DelEni(eni_id.into()));
        }
        self.commit(&mut inner, changes, durability)
    }

    // ---- intents ----

    /// Records a cloud mutation before it is made; always flushed.
    pub fn record_intent(&self, kind: IntentKind, client_token: Option<String>) -> Result<Intent, LedgerError> {
        let mut inner = self.lock();
        let id = inner.next_intent_id;
        let intent = Intent {
            id,
            kind,
            client_token,
            created_at: now_millis(),
        };
        self.commit(
            &mut inner,
            vec![Change::PutIntent(intent.clone()), Change::NextIntentId(id + 1)],
            Durability::Flush,
        )?;
        Ok(intent)
    }

    /// The mutation's outcome is known (and recorded): forget the intent.
    pub fn complete_intent(&self, id: u64, durability: Durability) -> Result<(), LedgerError> {
        let mut inner = self.lock();
        if !inner.state.intents.contains_key(&id) {
            return Ok(());
        }
        self.commit(&mut inner, vec![Change::DelIntent(id)], durability)
    }

    pub fn intents(&self) -> Vec<Intent> {
        self.lock().state.intents.values().cloned().collect()
    }

    // ---- whole-ledger views ----

    pub fn export(&self) -> Result<Export, LedgerError> {
        let s = self.snapshot();
        Ok(Export {
            export_version: EXPORT_VERSION,
            meta: Meta {
                schema_version: SCHEMA_VERSION,
                instance_id: s.instance_id.clone(),
                written_by: self.meta_get(META_WRITTEN_BY)?.unwrap_or_default(),
            },
            enis: s.enis.into_values().collect(),
            ips: s.ips.into_values().collect(),
            pods: s.pods.into_values().collect(),
            intents: s.intents.into_values().collect(),
            quarantine: self.quarantined()?,
        })
    }

    /// Records `repair` moved aside, by tree and key.
    pub fn quarantined(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, LedgerError> {
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for item in self.trees.quarantine.iter() {
            let (k, v) = item.map_err(|e| storage(&self.path, "read quarantine", e))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let (tree, rest) = key.split_once('/').unwrap_or(("?", &key));
            out.entry(tree.to_owned())
                .or_default()
                .insert(rest.to_owned(), String::from_utf8_lossy(&v).into_owned());
        }
        Ok(out)
    }

    /// Moves the named records into the quarantine tree (kept, not deleted),
    /// with the reason, in one transaction.
    pub(crate) fn quarantine(&self, records: &[(String, String, String)]) -> Result<usize, LedgerError> {
        let mut inner = self.lock();
        self.apply_logged(&mut inner)?;
        let t = &self.trees;
        let mut moved = 0;
        for (tree_name, key, reason) in records {
            let tree = match tree_name.as_str() {
                "enis" => &t.enis,
                "ips" => &t.ips,
                "pods" => &t.pods,
                "intents" => &t.intents,
                _ => continue,
            };
            let raw_key: Vec<u8> = if tree_name == "intents" {
                key.parse::<u64>()
                    .map(|n| n.to_be_bytes().to_vec())
                    .unwrap_or_else(|_| key.as_bytes().to_vec())
            } else {
                key.as_bytes().to_vec()
            };
            let result: Result<bool, TransactionError<()>> = (tree, &t.quarantine).transaction(|(src, q)| {
                let Some(value) = src.get(raw_key.as_slice())? else {
                    return Ok(false);
                };
                let entry = serde_json::json!({"reason": reason, "record": String::from_utf8_lossy(&value)});
                q.insert(format!("{tree_name}/{key}").as_bytes(), encode(&entry))?;
                src.remove(raw_key.as_slice())?;
                Ok(true)
            });
            if result.map_err(|e| storage(&self.path, "quarantine", format!("{e:?}")))? {
                moved += 1;
            }
        }
        self.db.flush().map_err(|e| storage(&self.path, "flush", e))?;
        // the mirror is rebuilt from disk: the moved records are gone from it
        let (state, next) = self.read_state()?;
        inner.state = state;
        inner.next_intent_id = next;
        Ok(moved)
    }
}

/// A ledger closed in order leaves sled holding every commit (sled flushes
/// as it closes), so the next open replays nothing.
impl Drop for Ledger {
    fn drop(&mut self) {
        let mut inner = self.lock();
        if let Err(error) = self.apply_logged(&mut inner) {
            tracing::warn!(%error, "ledger: applying logged commits at close failed; the next open replays them");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Applies what the write-ahead logs under `path` hold and sled lacks,
/// flushes sled, deletes the logs and starts a new one; returns it with the
/// sequence number of the next record.
fn recover_wal(path: &Path, db: &sled::Db, trees: &Trees) -> Result<(Arc<Wal>, u64), LedgerError> {
    let recovered = wal::recover(path).map_err(|e| storage(path, "read the write-ahead log", e))?;
    let applied: u64 = trees
        .meta
        .get(META_WAL_APPLIED)
        .map_err(|e| storage(path, "read meta", e))?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0);
    let mut last = applied;
    for (seq, ops) in &recovered.records {
        if *seq <= applied {
            continue;
        }
        for (tree, key, value) in ops {
            let tree = trees.numbered(*tree);
            match value {
                Some(v) => tree.insert(key.as_slice(), v.as_slice()).map(|_| ()),
                None => tree.remove(key.as_slice()).map(|_| ()),
            }
            .map_err(|e| storage(path, "replay the write-ahead log", e))?;
        }
        trees
            .meta
            .insert(META_WAL_APPLIED, seq.to_string().as_bytes())
            .map_err(|e| storage(path, "replay the write-ahead log", e))?;
        last = *seq;
    }
    if last > applied {
        tracing::info!(path = %path.display(), records = last - applied, "ledger: write-ahead log replayed");
    }
    db.flush().map_err(|e| storage(path, "flush", e))?;
    for file in &recovered.files {
        std::fs::remove_file(file).map_err(|e| storage(path, "delete a replayed write-ahead log", e))?;
    }
    let log =
        Wal::create(path, recovered.last_generation + 1).map_err(|e| storage(path, "create the write-ahead log", e))?;
    let log = Arc::new(log);
    let last_logged = recovered.records.last().map_or(0, |(seq, _)| *seq);
    Ok((log, last.max(last_logged) + 1))
}

/// Deletes snapshots sled was writing when the process died. Sled 0.34
/// reads `snap.*.generating` as its newest snapshot and refuses to open on a
/// torn one (sled issue #1527); one never renamed is never relied on, so the
/// previous snapshot and the log still hold everything. Only while holding
/// the lock sled takes (on `db`): a live holder may be writing one.
fn remove_unfinished_snapshots(path: &Path) {
    use fs2::FileExt;
    let Ok(db) = std::fs::OpenOptions::new().read(true).write(true).open(path.join("db")) else {
        return;
    };
    if db.try_lock_exclusive().is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::warn!(file = %entry.path().display(), "ledger: removed a snapshot left unfinished by a crash")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "ledger: could not remove an unfinished snapshot")
                }
            }
        }
    }
}

fn open_db(path: &Path) -> Result<sled::Db, LedgerError> {
    remove_unfinished_snapshots(path);
    let config = sled::Config::new().path(path).flush_every_ms(Some(500));
    // sled may panic on some kinds of damage; a damaged file must be an error, never a crash.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains("could not acquire lock") {
                Err(LedgerError::Locked {
                    path: path.to_path_buf(),
                })
            } else {
                Err(storage(path, "open", text))
            }
        }
        Err(_) => Err(LedgerError::Corrupt {
            path: path.to_path_buf(),
            what: "sled could not read its files".into(),
        }),
    }
}
