//! The level-triggered reconciler. Each pass does the local work first
//! (cooled addresses back to the pool), reads the cloud only when it must
//! (the sync period, after a failure, while ADDs wait, or to resolve
//! intents), then plans from scratch with the pool arithmetic and starts
//! every step that can start now: assigns to different ENIs and whole new
//! ENIs run at once, each behind an intent in the ledger. Our own mutations
//! that landed are confirmed from the metadata service (local facts, as
//! upstream reads them; not counted against the account's API limits), and
//! the cloud is read only when it disagrees. A pod served from the warm pool
//! costs no cloud call.

use super::{Node, CREATOR_TAG, EXCLUSIVE_TAG, NODE_TAG};
use backoff::backoff::Backoff;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use terway_cloud::api::*;
use terway_cloud::safety::{reason_to_keep, DeletionRules};
use terway_cloud::{new_client_token, CloudError, ErrorClass};
use terway_statestore::diff::{self, CloudEni};
use terway_statestore::pool::{self, EniRoom, PoolBounds, PoolCounts};
use terway_statestore::{now_millis, Durability, EniRecord, EniStatus, IntentKind, IpState, ROUTE_TABLE_BASE};
use tokio::task::JoinSet;

/// A step that failed (or found nothing to do) is not tried again for this
/// long, doubling up to the maximum: no hot loop against a refusing cloud.
const STEP_HOLD_OFF_MIN: Duration = Duration::from_secs(1);
const STEP_HOLD_OFF_MAX: Duration = Duration::from_secs(30);

/// How long the reconciler lets a burst of ADDs gather before planning for
/// it, when nothing is under way (a cloud step takes 100 ms or more anyway).
const BURST_WINDOW: Duration = Duration::from_millis(10);

/// While ADDs wait (or intents are unresolved), the cloud is read at most this often.
const OBSERVE_WHILE_WAITING: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub observed: bool,
    pub promoted: usize,
    pub adopted_ips: usize,
    /// Cloud steps started in this pass (they finish in the background).
    pub started: usize,
    pub released: usize,
    /// More could be done right away.
    pub progressed: bool,
    /// Our own changes were confirmed from the metadata service (no cloud read).
    pub confirmed_locally: bool,
}

/// When the reconciler last read the cloud, and whether it must again.
#[derive(Debug, Default)]
struct CloudView {
    observed_at: Option<Instant>,
    /// A failure (or a step whose outcome is unknown) since the last read.
    stale: bool,
    /// Our own mutations landed since the last read or confirmation.
    unconfirmed: bool,
    observations: u64,
}

impl CloudView {
    fn age(&self) -> Duration {
        self.observed_at.map_or(Duration::MAX, |t| t.elapsed())
    }

    /// The ledger matches what the cloud was last seen (or confirmed) to hold.
    fn fresh(&self) -> bool {
        !self.stale && !self.unconfirmed
    }
}

/// How a background step ended, for what the next pass must look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    /// Nothing changed in the cloud.
    Nothing,
    /// The cloud answered that our mutation happened.
    Landed,
    /// It failed: the cloud may or may not have changed.
    Unknown,
}

/// Steps under way, so the next plan counts what they will add and never
/// asks twice; the tasks themselves run in the loop's `JoinSet`.
#[derive(Debug, Default)]
struct InFlight {
    /// ENI → addresses an AssignPrivateIpAddresses under way adds to it.
    assigning: HashMap<String, u32>,
    /// ENIs an AssignIpv6Addresses is under way on (dual stack).
    assigning_ipv6: std::collections::HashSet<String>,
    /// Addresses (primary included) of each ENI being created and attached.
    creating: Vec<u32>,
    /// ENIs being created to be given whole to one pod each.
    creating_whole: u32,
    /// Dual stack: ENIs without IPv6 already reported (once each).
    told_without_ipv6: std::collections::HashSet<String>,
    /// Steps that just failed or did nothing, by kind ("create", "assign <eni>"):
    /// not started again before the instant, which doubles per failure (1 s … 30 s).
    held_off: HashMap<String, (Instant, Duration)>,
}

impl InFlight {
    fn may_start(&self, kind: &str) -> bool {
        self.held_off
            .get(kind)
            .is_none_or(|(until, _)| Instant::now() >= *until)
    }

    /// Records how a step of `kind` ended: a success clears its hold-off.
    fn ended(&mut self, kind: &str, succeeded: bool) {
        if succeeded {
            self.held_off.remove(kind);
            return;
        }
        let last = self.held_off.get(kind).map_or(Duration::ZERO, |(_, d)| *d);
        let next = (last * 2).clamp(STEP_HOLD_OFF_MIN, STEP_HOLD_OFF_MAX);
        self.held_off.insert(kind.to_owned(), (Instant::now() + next, next));
    }

    fn next_hold_off_end(&self) -> Option<Instant> {
        self.held_off
            .values()
            .map(|(until, _)| *until)
            .filter(|u| *u > Instant::now())
            .min()
    }
}

/// Runs passes until the task is aborted: on a wake-up, when a step
/// finishes, when the sync period or the next cooldown is due, and straight
/// again while a pass makes progress. Failed passes back off (the `backoff` crate).
pub async fn run(node: Arc<Node>) {
    let mut view = CloudView::default();
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let mut steps: JoinSet<StepEnd> = JoinSet::new();
    let mut retry = failure_backoff();
    let mut failing = false;
    loop {
        let started = Instant::now();
        let result = pass(&node, &mut view, &in_flight, &mut steps).await;
        node.reconcile_passes.fetch_add(1, Ordering::Relaxed);
        node.metrics
            .observe_reconcile(started.elapsed(), result.as_ref().err().map(ToString::to_string));
        let wait = match result {
            Ok(report) => {
                if failing {
                    retry.reset();
                    failing = false;
                }
                if report != PassReport::default() {
                    tracing::debug!(
                        ?report,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "reconcile pass"
                    );
                }
                if report.progressed {
                    continue;
                }
                let wait = next_due(&node, &view);
                match in_flight
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .next_hold_off_end()
                {
                    Some(end) => wait.min(end.saturating_duration_since(Instant::now())),
                    None => wait,
                }
            }
            Err(e) => {
                failing = true;
                view.stale = true;
                tracing::warn!(error = %e, "reconcile pass failed");
                node.set_last_error(Some(e.to_string()));
                // the local work of the next pass is not held back by the cloud's backoff
                let backoff = retry.next_backoff().unwrap_or(Duration::from_secs(30));
                cooling_due(&node).map_or(backoff, |due| backoff.min(due))
            }
        };
        tokio::select! {
            _ = node.wake.notified() => {
                // the first pod of a burst: let the rest of it arrive, so one plan
                // sizes the new ENIs for all of it instead of one small ENI each
                let waiting = node.waiting.load(Ordering::Relaxed) + node.waiting_eni.load(Ordering::Relaxed);
                if waiting > 0 && steps.is_empty() {
                    tokio::time::sleep(BURST_WINDOW).await;
                }
            }
            Some(done) = steps.join_next(), if !steps.is_empty() => {
                // confirm what landed; read the cloud after what may have
                match done.unwrap_or(StepEnd::Unknown) {
                    StepEnd::Nothing => {}
                    StepEnd::Landed => view.unconfirmed = true,
                    StepEnd::Unknown => view.stale = true,
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn failure_backoff() -> backoff::ExponentialBackoff {
    backoff::ExponentialBackoff {
        current_interval: Duration::from_millis(200),
        initial_interval: Duration::from_millis(200),
        randomization_factor: 0.3,
        multiplier: 2.0,
        max_interval: Duration::from_secs(30),
        max_elapsed_time: None,
        ..Default::default()
    }
}

/// How long until the next pass is due: the sync period, or sooner when a
/// cooling address becomes usable (so waiting ADDs get it at once).
fn next_due(node: &Node, view: &CloudView) -> Duration {
    let period = node.config().ip_pool_sync_period;
    let mut wait = period.saturating_sub(view.age().min(period));
    if let Some(due) = cooling_due(node) {
        wait = wait.min(due);
    }
    if node.waiting.load(Ordering::Relaxed) + node.waiting_eni.load(Ordering::Relaxed) > 0 {
        wait = wait.min(OBSERVE_WHILE_WAITING);
    }
    wait.max(Duration::from_millis(1))
}

/// How long until the next cooling address becomes usable.
fn cooling_due(node: &Node) -> Option<Duration> {
    let until = node.ledger.next_cooling_due()?;
    Some(Duration::from_millis(until.saturating_sub(now_millis())).max(Duration::from_millis(1)))
}

fn bounds(node: &Node) -> PoolBounds {
    let c = node.config();
    let (min_idle, max_idle) = c.idle_bounds(node.limits);
    PoolBounds {
        min_idle,
        max_idle,
        ips_per_eni: node.limits.ipv4_per_eni,
        max_secondary_enis: c.usable_secondary_enis(node.limits),
        batch: terway_config::defaults::ASSIGN_BATCH_SIZE,
    }
}

/// One pass: local work, the cloud when needed, then every step that can start now.
async fn pass(
    node: &Arc<Node>,
    view: &mut CloudView,
    in_flight: &Arc<Mutex<InFlight>>,
    steps: &mut JoinSet<StepEnd>,
) -> anyhow::Result<PassReport> {
    let mut report = PassReport::default();
    // local work never waits for the cloud
    report.promoted = node.ledger.promote_cooled(now_millis(), Durability::Lazy)?;
    if report.promoted > 0 {
        node.pool_changed.notify_waiters();
    }
    let waiting = node.waiting.load(Ordering::Relaxed);
    let anyone_waiting = waiting + node.waiting_eni.load(Ordering::Relaxed) > 0;
    // never read the cloud under our own steps: a half-done step would look like a crash's leftovers
    if view.unconfirmed && steps.is_empty() {
        confirm_locally(node, view, &mut report).await;
    }
    let due = view.stale || view.age() >= node.config().ip_pool_sync_period;
    let eager = (anyone_waiting || !node.ledger.intents().is_empty()) && view.age() >= OBSERVE_WHILE_WAITING;
    let exclusive_node = node.config().datapath_mode.is_exclusive();
    // a shared node plans from the ledger first, so waiting pods do not wait for a read
    if steps.is_empty() && (due || (eager && exclusive_node)) {
        read_cloud(node, view, &mut report, anyone_waiting).await?;
    }
    if exclusive_node {
        if !steps.is_empty() {
            return Ok(report);
        }
        let report = exclusive_pass(node, report).await?;
        view.unconfirmed |= report.progressed;
        return Ok(report);
    }

    let s = node.ledger.snapshot();
    let held = s.ips_held_by_intents();
    // the shared pool: addresses of ENIs no pod holds whole (and, dual stack, with IPv6)
    let shared = |r: &&terway_statestore::IpRecord| s.enis.get(&r.eni_id).is_some_and(|e| serves_pods(node, e));
    // the pool counts IPv4 addresses; a dual-stack ENI keeps an IPv6 beside each
    let count = |name: &str| {
        s.ips
            .values()
            .filter(|r| r.ip.is_ipv4())
            .filter(shared)
            .filter(|r| r.state.name() == name && !held.contains(&r.ip))
            .count() as u32
    };
    let (counts, rooms, unknown_enis) = {
        let flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        // ENI creations whose outcome is unknown (an answer lost, a crash): the
        // cloud may hold ENIs the ledger does not, until the next read says
        let eni_intents = s
            .intents
            .values()
            .filter(|i| match &i.kind {
                IntentKind::CreateEni { .. } => true,
                IntentKind::AttachEni { eni_id } => !s.enis.contains_key(eni_id),
                _ => false,
            })
            .count();
        let unknown_enis = eni_intents.saturating_sub(flight.creating.len() + flight.creating_whole as usize);
        let pending: u32 = flight.assigning.values().sum::<u32>() + flight.creating.iter().sum::<u32>();
        let counts = PoolCounts {
            idle: count("idle") + pending,
            cooling: count("cooling"),
            bound: count("bound"),
            waiting,
        };
        let mut rooms: Vec<EniRoom> = {
            let selector = node.vswitches.lock().unwrap_or_else(PoisonError::into_inner);
            s.enis
                .values()
                .map(|e| {
                    let assigning = flight.assigning.get(&e.id).copied();
                    EniRoom {
                        eni_id: e.id.clone(),
                        ips: s.ips.values().filter(|r| r.eni_id == e.id && r.ip.is_ipv4()).count() as u32
                            + assigning.unwrap_or(0),
                        // one AssignPrivateIpAddresses per ENI at a time
                        can_grow: assigning.is_none()
                            && e.status == EniStatus::InUse
                            && e.owner.is_none()
                            && serves_pods(node, e)
                            && !selector.is_set_aside(&e.vswitch_id),
                    }
                })
                .collect()
        };
        // ENIs being made count against the quota
        rooms.extend(flight.creating.iter().enumerate().map(|(i, n)| EniRoom {
            eni_id: format!("(creating {i})"),
            ips: *n,
            can_grow: false,
        }));
        rooms.extend((0..flight.creating_whole).map(|i| EniRoom {
            eni_id: format!("(creating whole {i})"),
            ips: 1,
            can_grow: false,
        }));
        // ENIs upstream gave whole to pods still running take their slots
        rooms.extend(
            node.upstream_whole_enis
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .filter(|id| !s.enis.contains_key(*id))
                .map(|id| EniRoom {
                    eni_id: id.clone(),
                    ips: 1,
                    can_grow: false,
                }),
        );
        (counts, rooms, unknown_enis)
    };
    let b = bounds(node);
    let mut plan = pool::plan(counts, b, &rooms);
    // the arithmetic finds no room at all (not merely a step held back below)
    let no_room = pool::deficit(counts, b) > 0 && plan.assign.is_empty() && plan.new_enis.is_empty();
    if unknown_enis > 0 {
        // no new ENI until the cloud says what became of those: the quota may be taken
        plan.new_enis.clear();
    }
    let growing = {
        let flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        !flight.assigning.is_empty() || !flight.creating.is_empty()
    };
    if !plan.assign.is_empty() || growing {
        // ENI slots are scarce: a new ENI only once the existing ones are known
        // to be full (an assign may find the vSwitch exhausted instead, and an
        // ENI being made may take more addresses once attached); the ENIs one
        // plan asks for are made together
        plan.new_enis.clear();
    }
    if !plan.new_enis.is_empty() && !may_create(node, in_flight) {
        plan.new_enis.clear();
    }
    if no_room && steps.is_empty() {
        node.set_last_error(Some(format!(
            "no room left on this node: {} of {} secondary ENIs ({}: {} ENIs including the primary) are in use, none can take more addresses",
            rooms.len(),
            b.max_secondary_enis,
            node.identity.instance_type,
            node.limits.enis
        )));
    }
    // secondary ENIs there are, are being made, or are about to be
    let enis_after = (rooms.len() + plan.new_enis.len()) as u32;
    let mut assigning_now = std::collections::HashSet::new();
    for (eni_id, n) in plan.assign {
        // one AssignPrivateIpAddresses per ENI at a time; the rest next pass
        let may = in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .may_start(&format!("assign {eni_id}"));
        if !may || !assigning_now.insert(eni_id.clone()) {
            continue;
        }
        in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .assigning
            .insert(eni_id.clone(), n);
        let (node, in_flight) = (node.clone(), in_flight.clone());
        steps.spawn(async move {
            let result = assign(&node, &eni_id, n, false).await;
            let mut flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            flight.assigning.remove(&eni_id);
            flight.ended(&format!("assign {eni_id}"), matches!(result, Ok(n) if n > 0));
            drop(flight);
            step_done(&node, "assign", result.map(|added| added > 0))
        });
        report.started += 1;
    }
    if node.dual_stack() {
        report.started += ipv6_top_up(node, &s, in_flight, steps);
    }
    for secondaries in plan.new_enis {
        in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .creating
            .push(secondaries + 1);
        let (node, in_flight) = (node.clone(), in_flight.clone());
        steps.spawn(async move {
            let result = create_eni(&node, secondaries, false).await;
            let mut flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(i) = flight.creating.iter().position(|n| *n == secondaries + 1) {
                flight.creating.remove(i);
            }
            flight.ended("create", matches!(result, Ok(true)));
            drop(flight);
            step_done(&node, "create ENI", result)
        });
        report.started += 1;
    }
    if unknown_enis == 0 {
        report.started += whole_enis(node, &s, enis_after, in_flight, steps);
    }
    if steps.is_empty() && eager && !report.observed {
        // nothing to start from what the ledger holds, and pods wait: ask the cloud, then plan again
        read_cloud(node, view, &mut report, anyone_waiting).await?;
        report.progressed = true;
        return Ok(report);
    }
    if node.dual_stack() && steps.is_empty() && view.fresh() && retire_eni_without_ipv6(node, &s, in_flight).await? {
        report.released += 1;
        report.progressed = true;
        view.unconfirmed = true;
        return Ok(report);
    }
    let no_whole_wanted = node.waiting_eni.load(Ordering::Relaxed) == 0;
    if no_whole_wanted && steps.is_empty() && view.fresh() {
        // an ENI given whole and returned is not kept: the shared pool may need its slot
        let idle_whole = s
            .enis
            .values()
            .find(|e| e.exclusive && e.created_by_us && e.owner.is_none() && e.status == EniStatus::InUse);
        if let Some(e) = idle_whole {
            if retire_eni(node, &e.id).await? {
                report.released += 1;
                report.progressed = true;
                view.unconfirmed = true;
                return Ok(report);
            }
        }
    }
    // giving back waits until nothing is growing (and the picture is fresh)
    if plan.release > 0 && steps.is_empty() && view.fresh() {
        if let Some(eni_id) = idle_eni_to_retire(&s, plan.release) {
            if retire_eni(node, &eni_id).await? {
                report.released += 1;
                report.progressed = true;
                view.unconfirmed = true;
                return Ok(report);
            }
        }
        report.released += release(node, plan.release as usize).await?;
        report.progressed = report.released > 0;
        view.unconfirmed |= report.released > 0;
    }
    if node.dual_stack() && report.released == 0 && steps.is_empty() && view.fresh() {
        report.released += release_ipv6_surplus(node).await?;
        view.unconfirmed |= report.released > 0;
    }
    Ok(report)
}

/// Whether pods share `e`'s addresses: not given whole to one pod and, on a
/// dual-stack node, with IPv6 (a pod takes one address of each family from
/// one ENI, so an ENI without IPv6 serves no pod and is no part of the pool).
fn serves_pods(node: &Node, e: &EniRecord) -> bool {
    !e.exclusive && (e.ipv6.is_some() || !node.dual_stack())
}

/// Dual stack: an ENI without IPv6 (on a vSwitch without an IPv6 CIDR, or
/// from before the node was dual) serves no pod. One terway-rs created is
/// given back once no pod holds its addresses; the others are said once.
/// Returns whether one was given back.
async fn retire_eni_without_ipv6(
    node: &Node,
    s: &terway_statestore::State,
    in_flight: &Arc<Mutex<InFlight>>,
) -> anyhow::Result<bool> {
    let held = s.ips_held_by_intents();
    for e in s
        .enis
        .values()
        .filter(|e| e.status == EniStatus::InUse && e.owner.is_none() && !e.exclusive && e.ipv6.is_none())
        // with IPv6 addresses its vSwitch has IPv6: the metadata service lagged, and adopt() reads it again
        .filter(|e| families(s, &e.id).1 == 0)
    {
        let idle = s
            .ips
            .values()
            .filter(|r| r.eni_id == e.id)
            .all(|r| r.state == IpState::Idle && !held.contains(&r.ip));
        if e.created_by_us && idle {
            tracing::info!(eni = %e.id, vswitch = %e.vswitch_id, "ENI without IPv6 serves no pod of this dual-stack node; giving it back");
            if retire_eni(node, &e.id).await? {
                return Ok(true);
            }
            continue;
        }
        if in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .told_without_ipv6
            .insert(e.id.clone())
        {
            let why = if e.created_by_us {
                "given back once its pods are gone"
            } else {
                "not made by terway-rs, so kept"
            };
            let message = format!(
                "ENI {} on vSwitch {} has no IPv6: it serves no pod of this dual-stack node ({why})",
                e.id, e.vswitch_id
            );
            tracing::warn!("{message}");
            node.tell(crate::bridge::Notice::NodeEvent {
                warning: true,
                reason: "EniWithoutIpv6",
                message,
            });
        }
    }
    Ok(false)
}

/// An ENI's addresses by family: (IPv4, IPv6).
fn families(s: &terway_statestore::State, eni_id: &str) -> (u32, u32) {
    s.ips.values().filter(|r| r.eni_id == eni_id).fold(
        (0, 0),
        |(v4, v6), r| if r.ip.is_ipv4() { (v4 + 1, v6) } else { (v4, v6 + 1) },
    )
}

/// Dual stack: every shared ENI holds an IPv6 address beside each IPv4 one
/// (a pod takes one of each from one ENI), topped up by AssignIpv6Addresses,
/// one call per ENI at a time. Returns the steps started.
fn ipv6_top_up(
    node: &Arc<Node>,
    s: &terway_statestore::State,
    in_flight: &Arc<Mutex<InFlight>>,
    steps: &mut JoinSet<StepEnd>,
) -> usize {
    let mut started = 0;
    for e in s
        .enis
        .values()
        .filter(|e| e.status == EniStatus::InUse && e.owner.is_none() && serves_pods(node, e))
    {
        let (v4, v6) = families(s, &e.id);
        let mut flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let coming = flight.assigning.get(&e.id).copied().unwrap_or(0);
        // the per-ENI quota is the smaller of the two families' (see read_capacity)
        let want = (v4 + coming)
            .min(node.limits.ipv4_per_eni)
            .saturating_sub(v6)
            .min(terway_config::defaults::ASSIGN_BATCH_SIZE);
        let kind = format!("assign IPv6 {}", e.id);
        if want == 0 || !flight.may_start(&kind) || !flight.assigning_ipv6.insert(e.id.clone()) {
            continue;
        }
        drop(flight);
        let (node, in_flight, eni_id) = (node.clone(), in_flight.clone(), e.id.clone());
        steps.spawn(async move {
            let result = assign(&node, &eni_id, want, true).await;
            let mut flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            flight.assigning_ipv6.remove(&eni_id);
            flight.ended(&kind, matches!(result, Ok(n) if n > 0));
            drop(flight);
            step_done(&node, "assign IPv6", result.map(|added| added > 0))
        });
        started += 1;
    }
    started
}

/// Dual stack: idle IPv6 addresses an ENI holds beyond its IPv4 ones (its
/// IPv4 surplus went back) are given back, one ENI per pass.
async fn release_ipv6_surplus(node: &Node) -> anyhow::Result<usize> {
    let s = node.ledger.snapshot();
    let held = s.ips_held_by_intents();
    for e in s.enis.values().filter(|e| e.owner.is_none() && !e.exclusive) {
        let (v4, v6) = families(&s, &e.id);
        if v6 <= v4 {
            continue;
        }
        let idle: Vec<IpAddr> = s
            .ips
            .values()
            .filter(|r| r.eni_id == e.id && r.ip.is_ipv6() && r.state == IpState::Idle && !held.contains(&r.ip))
            .map(|r| r.ip)
            .take((v6 - v4) as usize)
            .collect();
        if !idle.is_empty() {
            return unassign(node, &e.id, &idle).await;
        }
    }
    Ok(0)
}

/// Our own mutations landed: checks them against the metadata service —
/// each ENI the ledger holds attached, with exactly the addresses the ledger
/// records — instead of reading the cloud. A disagreement (the metadata
/// service can lag behind the API), an unreachable metadata service or an
/// open intent leaves the question to the next cloud read.
async fn confirm_locally(node: &Node, view: &mut CloudView, report: &mut PassReport) {
    if !node.ledger.intents().is_empty() {
        view.stale = true;
        return;
    }
    match local_disagreement(node).await {
        Ok(None) => {
            view.unconfirmed = false;
            report.confirmed_locally = true;
        }
        Ok(Some(what)) => {
            tracing::debug!(
                what,
                "the metadata service does not show our own changes yet; reading the cloud"
            );
            view.stale = true;
        }
        Err(error) => {
            tracing::debug!(%error, "could not confirm our own changes from the metadata service; reading the cloud");
            view.stale = true;
        }
    }
}

/// What the metadata service shows otherwise than the ledger, if anything.
async fn local_disagreement(node: &Node) -> anyhow::Result<Option<String>> {
    let s = node.ledger.snapshot();
    let attached: std::collections::BTreeSet<String> = node
        .metadata
        .macs()
        .await?
        .into_iter()
        .map(|m| m.to_ascii_lowercase())
        .collect();
    let mut local = Vec::new();
    for e in s.enis.values() {
        if !attached.contains(&e.mac.to_ascii_lowercase()) {
            continue;
        }
        let mut ips: Vec<IpAddr> = node
            .metadata
            .eni_addresses(&e.mac)
            .await?
            .into_iter()
            .map(IpAddr::V4)
            .collect();
        if node.dual_stack() {
            ips.extend(
                node.metadata
                    .eni_ipv6_addresses(&e.mac)
                    .await?
                    .into_iter()
                    .map(IpAddr::V6),
            );
        }
        local.push(CloudEni {
            id: e.id.clone(),
            vswitch_id: e.vswitch_id.clone(),
            attached: true,
            ips,
        });
    }
    let d = diff::diff(&s, &local);
    Ok(if let Some(eni) = d.vanished_enis.first() {
        Some(format!("ENI {eni} is not attached"))
    } else if let Some((eni, ips)) = d.adopt.first() {
        Some(format!("ENI {eni} has addresses the ledger lacks: {ips:?}"))
    } else {
        d.vanished_ips
            .first()
            .map(|ip| format!("address {ip} is not on its ENI"))
    })
}

/// Reads the cloud: ENIs left Available by a crash are deleted (when ENI
/// work is unresolved, and every 20th read), the ledger is brought in line
/// with what the cloud shows, and (pods waiting) set-aside vSwitches are
/// looked at again.
async fn read_cloud(
    node: &Node,
    view: &mut CloudView,
    report: &mut PassReport,
    anyone_waiting: bool,
) -> anyhow::Result<()> {
    let eni_work_unresolved = node
        .ledger
        .intents()
        .iter()
        .any(|i| matches!(i.kind, IntentKind::CreateEni { .. } | IntentKind::AttachEni { .. }));
    if eni_work_unresolved || view.observations % 20 == 0 {
        delete_leftover_enis(node).await?;
    }
    let cloud_enis = observe(node).await?;
    report.adopted_ips += adopt(node, &cloud_enis).await?;
    view.observed_at = Some(Instant::now());
    view.stale = false;
    view.unconfirmed = false;
    view.observations += 1;
    report.observed = true;
    if report.adopted_ips > 0 {
        node.pool_changed.notify_waiters();
    }
    if anyone_waiting {
        recheck_set_aside(node).await?;
    }
    Ok(())
}

/// Pods asking for a whole ENI on a shared node: one ENI without secondary
/// addresses each, made on demand within the quota (`enis`: secondary ENIs
/// there are or will be). Returns how many creations started.
fn whole_enis(
    node: &Arc<Node>,
    s: &terway_statestore::State,
    enis: u32,
    in_flight: &Arc<Mutex<InFlight>>,
    steps: &mut JoinSet<StepEnd>,
) -> usize {
    let waiting = node.waiting_eni.load(Ordering::Relaxed);
    if waiting == 0 {
        return 0;
    }
    let idle = s
        .enis
        .values()
        .filter(|e| e.exclusive && e.owner.is_none() && e.status == EniStatus::InUse)
        .count() as u32;
    let creating = in_flight.lock().unwrap_or_else(PoisonError::into_inner).creating_whole;
    let want = waiting.saturating_sub(idle + creating);
    let quota = node.config().usable_secondary_enis(node.limits);
    let room = quota.saturating_sub(enis);
    if want > room {
        node.set_last_error(Some(format!(
            "no ENI left to give a pod whole: {enis} of {quota} secondary ENIs are in use or being made ({}: EniQuantity {} including the primary)",
            node.identity.instance_type, node.limits.enis
        )));
    }
    let start = if may_create(node, in_flight) { want.min(room) } else { 0 };
    for _ in 0..start {
        in_flight.lock().unwrap_or_else(PoisonError::into_inner).creating_whole += 1;
        let (node, in_flight) = (node.clone(), in_flight.clone());
        steps.spawn(async move {
            let result = create_eni(&node, 0, true).await;
            let mut flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            flight.creating_whole -= 1;
            flight.ended("create", matches!(result, Ok(true)));
            drop(flight);
            step_done(&node, "create ENI for one pod", result)
        });
    }
    start as usize
}

/// Why no ENI can be created: every configured vSwitch is set aside.
fn no_vswitch_message(node: &Node, configured: &[String]) -> String {
    let aside: Vec<String> = node.vswitches_set_aside().into_iter().map(|(v, _)| v).collect();
    format!(
        "no vSwitch of zone {} has room (configured: {}; set aside after running out: {})",
        node.identity.zone_id,
        configured.join(", "),
        aside.join(", ")
    )
}

/// Whether an ENI may be created now: a configured vSwitch is not set
/// aside, and creation is not held off after a failure.
fn may_create(node: &Node, in_flight: &Arc<Mutex<InFlight>>) -> bool {
    if !in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .may_start("create")
    {
        return false;
    }
    let configured = node.configured_vswitches();
    let selector = node.vswitches.lock().unwrap_or_else(PoisonError::into_inner);
    if configured.iter().all(|v| selector.is_set_aside(v)) {
        drop(selector);
        node.set_last_error(Some(no_vswitch_message(node, &configured)));
        return false;
    }
    true
}

/// The end of a background step: wake the ADDs waiting for what it added,
/// and say what failed (the next pass plans again from what is true).
fn step_done(node: &Node, what: &str, result: anyhow::Result<bool>) -> StepEnd {
    match result {
        Ok(true) => {
            node.pool_changed.notify_waiters();
            StepEnd::Landed
        }
        Ok(false) => StepEnd::Nothing,
        Err(e) => {
            tracing::warn!(step = what, error = %e, "reconcile step failed");
            node.set_last_error(Some(e.to_string()));
            StepEnd::Unknown
        }
    }
}

/// A failed mutation's intent, by the error's class: a retryable failure's
/// outcome is unknown, so its intent stays until the cloud tells; anything
/// else did not happen (or is already done) and the intent is complete.
fn settle_failed(node: &Node, intent_id: u64, e: &CloudError) -> anyhow::Result<()> {
    if e.class() != ErrorClass::Retryable {
        node.ledger.complete_intent(intent_id, Durability::Flush)?;
    }
    Ok(())
}

/// ADDs are waiting and vSwitches are set aside: if the cloud shows free
/// addresses on one again (freed by this node or another), use it now rather
/// than after `vswitch_cooldown`.
async fn recheck_set_aside(node: &Node) -> anyhow::Result<()> {
    let due = node
        .vswitches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .recheck_due();
    if !due {
        return Ok(());
    }
    let zone = node
        .cloud
        .describe_vswitches_all(DescribeVSwitches {
            region_id: node.identity.region_id.clone(),
            zone_id: Some(node.identity.zone_id.clone()),
            ..Default::default()
        })
        .await?;
    let mut selector = node.vswitches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for v in zone {
        if v.available_ip_address_count > 0 && selector.is_set_aside(&v.vswitch_id) {
            selector.lift(&v.vswitch_id, v.available_ip_address_count);
        }
    }
    Ok(())
}

/// Exclusive-ENI mode: the pool counts whole idle ENIs, within
/// [`min_pool_size`, `max_pool_size`] and the instance's quota.
async fn exclusive_pass(node: &Node, mut report: PassReport) -> anyhow::Result<PassReport> {
    let s = node.ledger.snapshot();
    let config = node.config();
    let max_enis = config.usable_secondary_enis(node.limits);
    let idle: Vec<&EniRecord> = s
        .enis
        .values()
        .filter(|e| e.status == EniStatus::InUse && e.owner.is_none())
        .collect();
    let idle_count = idle.len() as u32;
    let waiting = node.waiting.load(Ordering::Relaxed);
    let min = config.min_pool_size.min(max_enis);
    let max = config.max_pool_size.max(min);
    let want = (min + waiting)
        .saturating_sub(idle_count)
        .max(waiting.saturating_sub(idle_count));
    if want > 0 {
        if (s.enis.len() as u32) < max_enis {
            if create_eni(node, 0, true).await? {
                report.started += 1;
                report.progressed = true;
                node.pool_changed.notify_waiters();
            }
        } else if waiting > 0 {
            node.set_last_error(Some(format!(
                "exclusive ENI mode: all {max_enis} secondary ENIs this node may use are taken ({}: EniQuantity {} including the primary)",
                node.identity.instance_type, node.limits.enis
            )));
        }
    } else if waiting == 0 && idle_count > max {
        if let Some(eni) = idle.iter().find(|e| e.created_by_us) {
            report.progressed = retire_eni(node, &eni.id).await?;
        }
    }
    Ok(report)
}

/// Shared mode: an ENI terway-rs created whose addresses are all idle and
/// together within the surplus, so giving the whole ENI back (rather than
/// address by address) keeps the pool within bounds and frees an ENI slot.
fn idle_eni_to_retire(s: &terway_statestore::State, surplus: u32) -> Option<String> {
    let held = s.ips_held_by_intents();
    s.enis
        .values()
        .filter(|e| e.created_by_us && e.status == EniStatus::InUse && e.owner.is_none() && !e.exclusive)
        .find(|e| {
            let ips: Vec<_> = s.ips.values().filter(|r| r.eni_id == e.id).collect();
            ips.len() as u32 <= surplus && ips.iter().all(|r| r.state == IpState::Idle && !held.contains(&r.ip))
        })
        .map(|e| e.id.clone())
}

/// Detaches and deletes an idle ENI terway-rs created, behind intents.
/// Returns `false` without a cloud call if a pod took one of its addresses
/// (or an intent touches it) since the caller looked.
async fn retire_eni(node: &Node, eni_id: &str) -> anyhow::Result<bool> {
    if !node.ledger.drain_eni_if_idle(eni_id, Durability::Flush)? {
        return Ok(false);
    }
    let region = node.identity.region_id.clone();
    let detach = node
        .ledger
        .record_intent(IntentKind::DetachEni { eni_id: eni_id.into() }, None)?;
    let r = node
        .cloud
        .call(&DetachNetworkInterface {
            region_id: region.clone(),
            instance_id: node.identity.instance_id.clone(),
            network_interface_id: eni_id.into(),
        })
        .await;
    if let Err(e) = r {
        if e.class() != ErrorClass::AlreadyDone {
            tracing::warn!(eni = eni_id, error = %e, "detach failed");
            settle_failed(node, detach.id, &e)?;
            return Ok(false);
        }
    }
    // wait until the cloud shows it Available (or gone), then delete it
    wait_for_eni(node, eni_id, |e| e.is_none_or(|e| e.status == "Available")).await?;
    node.ledger.complete_intent(detach.id, Durability::Flush)?;
    let delete = node
        .ledger
        .record_intent(IntentKind::DeleteEni { eni_id: eni_id.into() }, None)?;
    match node
        .cloud
        .call(&DeleteNetworkInterface {
            region_id: region,
            network_interface_id: eni_id.into(),
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.class() == ErrorClass::AlreadyDone => {}
        Err(e) => tracing::warn!(eni = eni_id, error = %e, "delete failed; the leftover sweep retries"),
    }
    node.ledger.remove_eni(eni_id, Durability::Flush)?;
    node.ledger.complete_intent(delete.id, Durability::Flush)?;
    tracing::info!(eni = eni_id, "idle ENI detached and deleted");
    Ok(true)
}

/// Deletes ENIs terway-rs created for this instance that were left
/// Available (a crash between create and attach): they hold addresses and
/// count against the region's ENI quota.
async fn delete_leftover_enis(node: &Node) -> anyhow::Result<()> {
    let leftovers = node
        .cloud
        .describe_network_interfaces_all(DescribeNetworkInterfaces {
            region_id: node.identity.region_id.clone(),
            status: Some("Available".into()),
            tags: vec![(super::NODE_TAG.to_owned(), node.identity.instance_id.clone())],
            max_results: Some(100),
            ..Default::default()
        })
        .await?;
    // the server filtered by status and tag; a gateway that did not must not
    // make us delete anything else
    let rules = DeletionRules {
        creator_tag: super::CREATOR_TAG,
        node_tag: Some((super::NODE_TAG, &node.identity.instance_id)),
        status: "Available",
        // no minimum age: only this node's terwayd makes ENIs with its node
        // tag, and the cloud is never read while its own steps run
        min_age: Duration::ZERO,
        now: std::time::SystemTime::now(),
    };
    for eni in leftovers {
        if let Some(why) = reason_to_keep(&eni, &rules) {
            tracing::debug!(eni = %eni.network_interface_id, why, "not deleted by the leftover sweep");
            continue;
        }
        let id = eni.network_interface_id;
        let intent = node
            .ledger
            .record_intent(IntentKind::DeleteEni { eni_id: id.clone() }, None)?;
        match node
            .cloud
            .call(&DeleteNetworkInterface {
                region_id: node.identity.region_id.clone(),
                network_interface_id: id.clone(),
            })
            .await
        {
            Ok(r) => tracing::info!(eni = %id, request_id = %r.request_id, "deleted an ENI left Available"),
            Err(e) if e.class() == ErrorClass::AlreadyDone => {}
            Err(e) => tracing::warn!(eni = %id, error = %e, "could not delete an ENI left Available"),
        }
        node.ledger.complete_intent(intent.id, Durability::Flush)?;
    }
    Ok(())
}

/// The secondary ENIs attached to this instance, as the cloud shows them.
async fn observe(node: &Node) -> anyhow::Result<Vec<NetworkInterfaceSet>> {
    let enis = node
        .cloud
        .describe_network_interfaces_all(DescribeNetworkInterfaces {
            region_id: node.identity.region_id.clone(),
            instance_id: Some(node.identity.instance_id.clone()),
            kind: Some("Secondary".into()),
            max_results: Some(100),
            ..Default::default()
        })
        .await?;
    let filter = &node.config().eni_tag_filter;
    let blocked = &node.config().eni_tag_block_list;
    Ok(enis
        .into_iter()
        // the server was asked for these; what is adopted is decided here
        .filter(|e| e.kind == "Secondary" && e.instance_id == node.identity.instance_id)
        .filter(|e| filter.iter().all(|(k, v)| e.tag(k) == Some(v.as_str())))
        .filter(|e| !blocked.iter().any(|t| e.tag(&t.key) == Some(t.value.as_str())))
        .collect())
}

/// Brings the ledger in line with the cloud: adopts ENIs and addresses the
/// cloud confirmed, forgets what vanished, resolves intents. Returns how many
/// addresses were adopted.
async fn adopt(node: &Node, cloud: &[NetworkInterfaceSet]) -> anyhow::Result<usize> {
    let snapshot = node.ledger.snapshot();
    let view: Vec<CloudEni> = cloud
        .iter()
        .map(|e| CloudEni {
            id: e.network_interface_id.clone(),
            vswitch_id: e.vswitch_id.clone(),
            attached: e.status == "InUse",
            ips: e
                .ipv4_addresses()
                .into_iter()
                .map(IpAddr::V4)
                .chain(e.ipv6_addresses().into_iter().map(IpAddr::V6))
                .collect(),
        })
        .collect();
    let d = diff::diff(&snapshot, &view);
    let mut adopted = 0;
    let whole_upstream = node
        .upstream_whole_enis
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for id in &d.new_enis {
        let Some(e) = cloud.iter().find(|e| &e.network_interface_id == id) else {
            continue;
        };
        if whole_upstream.contains_key(id) {
            continue; // inside an upstream pod (see upstream.rs)
        }
        // one ENI that cannot be set up (its link not on the host) keeps no other from the pool
        if let Err(err) = adopt_eni(node, e).await {
            tracing::warn!(eni = %id, error = %err, "ENI not adopted; tried again at the next cloud read");
            node.set_last_error(Some(format!("ENI {id} not adopted: {err}")));
        }
    }
    if node.dual_stack() {
        // recorded without IPv6 while the cloud shows it IPv6 addresses (the
        // metadata service lagged, or the node became dual): read it again
        for e in cloud.iter().filter(|e| !e.ipv6_addresses().is_empty()) {
            if snapshot
                .enis
                .get(&e.network_interface_id)
                .is_some_and(|r| r.ipv6.is_none() && !r.exclusive)
            {
                adopt_eni(node, e).await?;
            }
        }
    }
    for (eni_id, ips) in &d.adopt {
        if node.ledger.snapshot().enis.contains_key(eni_id) {
            super::upstream::hold_adopted(node, eni_id, ips)?;
            adopted += node.ledger.adopt_ips(eni_id, ips, Durability::Flush)?.len();
        }
    }
    let vanished: Vec<IpAddr> = d
        .vanished_ips
        .iter()
        .copied()
        .filter(|ip| {
            let bound = matches!(snapshot.ips.get(ip).map(|r| &r.state), Some(IpState::Bound(_)));
            if bound {
                tracing::error!(ip = %ip, "an address bound to a pod is gone from the cloud; keeping the pod's record");
            }
            !bound
        })
        .collect();
    if !vanished.is_empty() {
        tracing::warn!(ips = ?vanished, "addresses gone from the cloud; forgetting them");
        node.ledger.remove_ips(&vanished, Durability::Flush)?;
    }
    for eni in &d.vanished_enis {
        if let Err(e) = node.ledger.remove_eni(eni, Durability::Flush) {
            tracing::error!(eni = %eni, error = %e, "ENI gone from the cloud but still in use");
        }
    }
    for (id, outcome) in &d.intents {
        tracing::info!(intent = id, ?outcome, "intent resolved from the cloud's state");
        node.ledger.complete_intent(*id, Durability::Flush)?;
    }
    Ok(adopted)
}

/// Records an attached ENI (gateway and CIDR from the metadata service) and
/// sets it up on the host.
async fn adopt_eni(node: &Node, e: &NetworkInterfaceSet) -> anyhow::Result<()> {
    let md = node.metadata.eni(&e.mac_address).await?;
    let exclusive = node.config().datapath_mode.is_exclusive() || e.tag(EXCLUSIVE_TAG.0) == Some(EXCLUSIVE_TAG.1);
    // upstream's table numbering (1000 + the link's index) where the ENI is
    // set up on the host; without a datapath the number is only a label
    let route_table = match (&node.datapath, exclusive) {
        (Some(dp), false) => {
            let mac = terway_datapath::names::parse_mac(&e.mac_address)
                .ok_or_else(|| anyhow::anyhow!("ENI {} has a bad MAC {:?}", e.network_interface_id, e.mac_address))?;
            dp.eni_route_table(mac).await?
        }
        _ => ROUTE_TABLE_BASE + e.attachment.device_index,
    };
    let ipv6 = if node.dual_stack() {
        node.metadata
            .eni_ipv6(&e.mac_address)
            .await?
            .map(|(gateway, cidr)| terway_statestore::EniIpv6 { gateway, cidr })
    } else {
        None
    };
    let record = EniRecord {
        id: e.network_interface_id.clone(),
        mac: e.mac_address.clone(),
        vswitch_id: e.vswitch_id.clone(),
        gateway: IpAddr::V4(md.gateway),
        cidr: md.vswitch_cidr.clone(),
        primary_ip: e.private_ip_address.parse()?,
        status: EniStatus::InUse,
        route_table,
        created_by_us: e.tag(CREATOR_TAG.0) == Some(CREATOR_TAG.1),
        owner: None,
        exclusive,
        ipv6,
    };
    // an ENI given whole goes into its pod as it is: no host set-up
    if let (Some(dp), false) = (&node.datapath, record.exclusive) {
        dp.ensure_eni(&super::pod_network::eni_link(node, &record)?, node.node_ip)
            .await?;
    }
    tracing::info!(eni = %record.id, vswitch = %record.vswitch_id, table = record.route_table, "ENI adopted");
    node.ledger.adopt_eni(record, Durability::Flush)?;
    Ok(())
}

/// The error as the node reports it: what failed, the code, the request id.
/// Failures that are not retried on their own become a node Event too.
fn note_failure(node: &Node, e: &CloudError) {
    node.set_last_error(Some(e.to_string()));
    if !matches!(e.class(), ErrorClass::Retryable | ErrorClass::VSwitchExhausted) {
        // without the request id, so repeats of one failure count up one Event (the log has each id)
        let text = e.to_string();
        let message = text.split(" [RequestId:").next().unwrap_or(&text).to_owned();
        node.tell(crate::bridge::Notice::NodeEvent {
            warning: true,
            reason: "AllocIPFailed",
            message,
        });
    }
}

/// AssignPrivateIpAddresses (or, `ipv6`, AssignIpv6Addresses) on `eni_id`, behind an intent.
async fn assign(node: &Node, eni_id: &str, n: u32, ipv6: bool) -> anyhow::Result<usize> {
    let token = new_client_token();
    let intent = node.ledger.record_intent(
        IntentKind::AssignIps {
            eni_id: eni_id.into(),
            count: n,
            ipv6,
        },
        Some(token.clone()),
    )?;
    let (region_id, network_interface_id) = (node.identity.region_id.clone(), eni_id.to_owned());
    let answer: Result<(Vec<IpAddr>, String), CloudError> = if ipv6 {
        let req = AssignIpv6Addresses {
            region_id,
            network_interface_id,
            ipv6_address_count: n,
            client_token: Some(token),
        };
        (node.cloud.call(&req).await).map(|r| (r.addresses().into_iter().map(IpAddr::V6).collect(), r.request_id))
    } else {
        let req = AssignPrivateIpAddresses {
            region_id,
            network_interface_id,
            secondary_private_ip_address_count: Some(n),
            client_token: Some(token),
            ..Default::default()
        };
        (node.cloud.call(&req).await).map(|r| (r.addresses().into_iter().map(IpAddr::V4).collect(), r.request_id))
    };
    match answer {
        Ok((ips, request_id)) => {
            let fresh = node.ledger.adopt_ips(eni_id, &ips, Durability::Flush)?;
            node.ledger.complete_intent(intent.id, Durability::Flush)?;
            tracing::info!(eni = eni_id, count = fresh.len(), ipv6, request_id = %request_id, "addresses assigned");
            node.set_last_error(None);
            Ok(fresh.len())
        }
        Err(e) => {
            let vswitch = node
                .ledger
                .snapshot()
                .enis
                .get(eni_id)
                .map(|r| r.vswitch_id.clone())
                .unwrap_or_default();
            tracing::warn!(eni = eni_id, vswitch = %vswitch, ipv6, error = %e, request_id = e.request_id().unwrap_or(""), "assign failed");
            note_failure(node, &e);
            if e.class() == ErrorClass::VSwitchExhausted {
                node.set_vswitch_aside(&vswitch, &e.to_string());
            }
            settle_failed(node, intent.id, &e)?;
            Ok(0)
        }
    }
}

/// Creates and attaches an ENI on the first vSwitch that has room;
/// `exclusive`: to be given whole to one pod (tagged so).
async fn create_eni(node: &Node, secondaries: u32, exclusive: bool) -> anyhow::Result<bool> {
    let mut configured = node.configured_vswitches();
    // a pod on a dual-stack node takes an IPv6 address from the ENI too
    let needs_ipv6 = node.dual_stack() && !exclusive;
    let mut free = HashMap::new();
    if node.config().vswitch_selection_policy == terway_config::VSwitchSelectionPolicy::Ordered || needs_ipv6 {
        let mut without_ipv6 = Vec::new();
        for v in node
            .cloud
            .describe_vswitches_all(DescribeVSwitches {
                region_id: node.identity.region_id.clone(),
                zone_id: Some(node.identity.zone_id.clone()),
                ..Default::default()
            })
            .await?
        {
            if needs_ipv6 && v.ipv6_cidr_block.is_empty() {
                without_ipv6.push(v.vswitch_id.clone());
            }
            free.insert(v.vswitch_id, v.available_ip_address_count);
        }
        let (with, lacking): (Vec<String>, Vec<String>) =
            configured.into_iter().partition(|v| !without_ipv6.contains(v));
        configured = with;
        if configured.is_empty() {
            let message = format!(
                "ip_stack is dual but no configured vSwitch of zone {} has an IPv6 CIDR ({} have none)",
                node.identity.zone_id,
                lacking.join(", ")
            );
            node.set_last_error(Some(message));
            return Ok(false);
        }
    }
    let candidates = node
        .vswitches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .candidates(&configured, node.config().vswitch_selection_policy, &free);
    if candidates.is_empty() {
        node.set_last_error(Some(no_vswitch_message(node, &configured)));
        return Ok(false);
    }
    let mut tags: Vec<(String, String)> = vec![
        (CREATOR_TAG.0.into(), CREATOR_TAG.1.into()),
        (NODE_TAG.into(), node.identity.instance_id.clone()),
    ];
    if exclusive {
        tags.push((EXCLUSIVE_TAG.0.into(), EXCLUSIVE_TAG.1.into()));
    }
    tags.extend(node.config().eni_tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    for vswitch in candidates {
        let token = new_client_token();
        let intent = node.ledger.record_intent(
            IntentKind::CreateEni {
                vswitch_id: vswitch.clone(),
            },
            Some(token.clone()),
        )?;
        let req = CreateNetworkInterface {
            region_id: node.identity.region_id.clone(),
            vswitch_id: vswitch.clone(),
            security_group_ids: node.eni_security_groups(),
            secondary_private_ip_address_count: (secondaries > 0).then_some(secondaries),
            // dual stack: an IPv6 beside each IPv4 (not for an ENI given whole)
            ipv6_address_count: (node.dual_stack() && !exclusive).then_some(secondaries + 1),
            tags: tags.clone(),
            resource_group_id: node.config().resource_group_id.clone(),
            description: Some(format!("terway-rs ENI of {}", node.identity.instance_id)),
            client_token: Some(token),
            ..Default::default()
        };
        let created = match node.cloud.call(&req).await {
            Ok(c) => {
                node.ledger.complete_intent(intent.id, Durability::Flush)?;
                c
            }
            Err(e) => {
                tracing::warn!(vswitch = %vswitch, error = %e, request_id = e.request_id().unwrap_or(""), "ENI creation failed");
                note_failure(node, &e);
                settle_failed(node, intent.id, &e)?;
                if e.class() == ErrorClass::VSwitchExhausted {
                    node.set_vswitch_aside(&vswitch, &e.to_string());
                    continue;
                }
                return Ok(false);
            }
        };
        let eni_id = created.eni.network_interface_id.clone();
        tracing::info!(eni = %eni_id, vswitch = %vswitch, request_id = %created.request_id, "ENI created; attaching");
        let attach = node
            .ledger
            .record_intent(IntentKind::AttachEni { eni_id: eni_id.clone() }, None)?;
        let result = node
            .cloud
            .call(&AttachNetworkInterface {
                region_id: node.identity.region_id.clone(),
                instance_id: node.identity.instance_id.clone(),
                network_interface_id: eni_id.clone(),
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(eni = %eni_id, error = %e, "attach failed");
            note_failure(node, &e);
            settle_failed(node, attach.id, &e)?;
            if e.class() != ErrorClass::Retryable {
                // an ENI we made and could not attach is ours to delete
                let _ = node
                    .cloud
                    .call(&DeleteNetworkInterface {
                        region_id: node.identity.region_id.clone(),
                        network_interface_id: eni_id,
                    })
                    .await;
            }
            return Ok(false);
        }
        let in_use = wait_in_use(node, &eni_id).await?;
        node.ledger.complete_intent(attach.id, Durability::Flush)?;
        if let Some(eni) = in_use {
            adopt_eni(node, &eni).await?;
            let ips: Vec<IpAddr> = eni
                .ipv4_addresses()
                .into_iter()
                .map(IpAddr::V4)
                .chain(eni.ipv6_addresses().into_iter().map(IpAddr::V6))
                .collect();
            node.ledger.adopt_ips(&eni_id, &ips, Durability::Flush)?;
            node.set_last_error(None);
            return Ok(true);
        }
        return Ok(false);
    }
    Ok(false)
}

/// Polls until the ENI is InUse (bounded); `None` if it did not get there.
async fn wait_in_use(node: &Node, eni_id: &str) -> anyhow::Result<Option<NetworkInterfaceSet>> {
    let found = wait_for_eni(node, eni_id, |e| e.is_some_and(|e| e.status == "InUse")).await?;
    if found.is_none() {
        tracing::warn!(
            eni = eni_id,
            "ENI did not become InUse in time; the next pass picks it up"
        );
    }
    Ok(found)
}

/// Polls DescribeNetworkInterfaces (backing off, for at most a minute) until
/// `done` holds for what the cloud shows of the ENI (`None`: it is gone).
async fn wait_for_eni(
    node: &Node,
    eni_id: &str,
    done: impl Fn(Option<&NetworkInterfaceSet>) -> bool,
) -> anyhow::Result<Option<NetworkInterfaceSet>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(100);
    while Instant::now() < deadline {
        let r = node
            .cloud
            .call(&DescribeNetworkInterfaces {
                region_id: node.identity.region_id.clone(),
                network_interface_ids: vec![eni_id.to_owned()],
                ..Default::default()
            })
            .await?;
        let eni = r.network_interface_sets.items.into_iter().next();
        if done(eni.as_ref()) {
            return Ok(eni);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    Ok(None)
}

/// Gives back `n` idle addresses (never an ENI's primary one), from the
/// ENIs with the fewest bound addresses first.
async fn release(node: &Node, n: usize) -> anyhow::Result<usize> {
    let s = node.ledger.snapshot();
    let held = s.ips_held_by_intents();
    let mut bound: BTreeMap<&str, usize> = BTreeMap::new();
    for r in s.ips.values().filter(|r| matches!(r.state, IpState::Bound(_))) {
        *bound.entry(r.eni_id.as_str()).or_default() += 1;
    }
    let mut idle: Vec<(usize, &str, IpAddr)> = s
        .ips
        .values()
        .filter(|r| r.ip.is_ipv4() && matches!(r.state, IpState::Idle | IpState::Releasing) && !held.contains(&r.ip))
        .filter(|r| {
            s.enis
                .get(&r.eni_id)
                .is_some_and(|e| e.primary_ip != r.ip && e.owner.is_none() && !e.exclusive)
        })
        .map(|r| {
            (
                bound.get(r.eni_id.as_str()).copied().unwrap_or(0),
                r.eni_id.as_str(),
                r.ip,
            )
        })
        .collect();
    idle.sort();
    let Some(&(_, eni_id, _)) = idle.first() else {
        return Ok(0);
    };
    let chosen: Vec<IpAddr> = idle
        .iter()
        .filter(|(_, e, _)| *e == eni_id)
        .take(n.min(10))
        .map(|(_, _, ip)| *ip)
        .collect();
    unassign(node, eni_id, &chosen).await
}

/// Gives `chosen` (idle, or Releasing after a crash; one family) of
/// `eni_id` back to the cloud, behind an intent. Returns how many went.
async fn unassign(node: &Node, eni_id: &str, chosen: &[IpAddr]) -> anyhow::Result<usize> {
    let s = node.ledger.snapshot();
    let mut marked = node.ledger.mark_releasing(chosen, Durability::Flush)?;
    marked.extend(
        chosen
            .iter()
            .filter(|ip| matches!(s.ips.get(ip).map(|r| &r.state), Some(IpState::Releasing))),
    );
    if marked.is_empty() {
        return Ok(0);
    }
    let intent = node.ledger.record_intent(
        IntentKind::UnassignIps {
            eni_id: eni_id.into(),
            ips: marked.clone(),
        },
        None,
    )?;
    let v4: Vec<std::net::Ipv4Addr> = marked
        .iter()
        .filter_map(|ip| if let IpAddr::V4(v) = ip { Some(*v) } else { None })
        .collect();
    let v6: Vec<std::net::Ipv6Addr> = marked
        .iter()
        .filter_map(|ip| if let IpAddr::V6(v) = ip { Some(*v) } else { None })
        .collect();
    let (region_id, network_interface_id) = (node.identity.region_id.clone(), eni_id.to_owned());
    let result = if v6.is_empty() {
        node.cloud
            .call(&UnassignPrivateIpAddresses {
                region_id,
                network_interface_id,
                private_ip_addresses: v4,
            })
            .await
    } else {
        node.cloud
            .call(&UnassignIpv6Addresses {
                region_id,
                network_interface_id,
                ipv6_addresses: v6,
            })
            .await
    };
    match result {
        Ok(_) => {}
        Err(e) if e.class() == ErrorClass::AlreadyDone => {}
        Err(e) => {
            tracing::warn!(eni = eni_id, error = %e, "unassign failed");
            settle_failed(node, intent.id, &e)?;
            return Ok(0);
        }
    }
    node.ledger.remove_ips(&marked, Durability::Flush)?;
    node.ledger.complete_intent(intent.id, Durability::Flush)?;
    tracing::info!(
        eni = eni_id,
        count = marked.len(),
        "idle addresses above max_pool_size given back"
    );
    Ok(marked.len())
}
