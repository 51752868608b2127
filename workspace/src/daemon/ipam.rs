//! IPAM: the node's resource pools side by side — shared secondary addresses
//! and whole ENIs — with the ledger as their storage (every change durable
//! before it is answered). A request that finds its pool empty waits, counted,
//! so the reconciler grows that pool; anything that frees or adds a resource
//! wakes the waiters. Releasing a pod (DEL, CNI GC, Kubernetes GC) goes
//! through here too: the datapath is undone first, then the ledger.

use super::pod_network;
use super::Node;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use terway_statestore::{now_millis, BindRequest, Bound, Durability, EniPreference, LedgerError, PodRecord, Released};

/// Which pool a pod takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// A secondary address of a shared ENI.
    SharedAddress,
    /// A whole ENI (its primary address); `any_eni` on a node in
    /// exclusive-ENI mode, where every ENI serves one pod.
    WholeEni { any_eni: bool },
}

impl Pool {
    /// The pool a pod asking for (`wants_eni`) an ENI of its own takes from on this node.
    pub fn for_pod(node: &Node, wants_eni: bool) -> Self {
        let whole_node = node.config().datapath_mode.is_exclusive();
        if whole_node || wants_eni {
            Pool::WholeEni { any_eni: whole_node }
        } else {
            Pool::SharedAddress
        }
    }

    /// The count of requests waiting on this pool, which the reconciler reads.
    fn waiting(self, node: &Node) -> &AtomicU32 {
        match self {
            Pool::WholeEni { any_eni: false } => &node.waiting_eni,
            _ => &node.waiting,
        }
    }
}

#[derive(Debug)]
pub enum AllocError {
    /// Nothing free before the deadline; why the pool did not grow.
    Exhausted(String),
    Ledger(LedgerError),
}

/// Decrements a waiting count however the wait ends, so a request that
/// gave up stops asking the pool to grow.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a resource from `pool` for the pod (the same one again for a
/// repeated ADD), waiting until `deadline` for the pool to grow.
pub async fn allocate(node: &Node, request: &BindRequest, pool: Pool, deadline: Instant) -> Result<Bound, AllocError> {
    let pref = match node.config().eni_selection_policy {
        terway_config::EniSelectionPolicy::MostIps => EniPreference::MostUsed,
        terway_config::EniSelectionPolicy::LeastIps => EniPreference::LeastUsed,
    };
    loop {
        let notified = node.pool_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let attempt = match pool {
            Pool::WholeEni { any_eni } => node.ledger.reserve_eni(request, any_eni, Durability::Flush),
            Pool::SharedAddress => node.ledger.bind(request, pref, Durability::Flush),
        };
        let cooling = match attempt {
            Ok(bound) => {
                node.wake.notify_one(); // the pool shrank by one: top it up
                return Ok(bound);
            }
            Err(LedgerError::NoIdleIp { cooling }) => {
                // addresses whose cooldown is over are usable now, whatever the
                // reconciler is doing (it may be stuck on an unreachable cloud)
                if cooling > 0
                    && node
                        .ledger
                        .promote_cooled(now_millis(), Durability::Lazy)
                        .map_err(AllocError::Ledger)?
                        > 0
                {
                    continue;
                }
                cooling
            }
            Err(LedgerError::NoIdleEni) => 0,
            Err(e) => return Err(AllocError::Ledger(e)),
        };
        // counted while asleep only: a request that has just taken a resource
        // (and waits for the ledger's sync) must not make the reconciler add another
        let counter = pool.waiting(node);
        counter.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(counter);
        node.wake.notify_one();
        let left = deadline.saturating_duration_since(Instant::now());
        // woken by a change to the pool, or when the next cooling address is due
        let cooled = node
            .ledger
            .next_cooling_due()
            .map(|until| Duration::from_millis(until.saturating_sub(now_millis()) + 1));
        if left.is_zero() {
            return Err(exhausted(node, pool, cooling));
        }
        match tokio::time::timeout(cooled.map_or(left, |c| c.min(left)), notified).await {
            Ok(()) => {}
            Err(_) if cooled.is_some_and(|c| c < left) => {}
            Err(_) => return Err(exhausted(node, pool, cooling)),
        }
    }
}

/// Why an ADD gave up waiting.
fn exhausted(node: &Node, pool: Pool, cooling: usize) -> AllocError {
    AllocError::Exhausted(node.last_error().unwrap_or_else(|| match pool {
        Pool::SharedAddress => format!("the pool is still growing ({cooling} addresses cooling down)"),
        Pool::WholeEni { .. } => "an ENI for the pod is still being made".to_owned(),
    }))
}

/// Gives back what a recorded pod holds, as a DEL of that very container
/// would (`netns`: the runtime's path when it gave one): its network is torn
/// down, then its address or ENI goes back to its pool (cooling first).
/// A newer sandbox of the same pod is left alone.
pub async fn release(node: &Node, record: &PodRecord, netns: Option<&str>) -> Result<Released, String> {
    release_wired_as(node, record, record, netns).await
}

/// [`release`] of `record` whose datapath is that of `wired` (a placeholder
/// of a pod wired before terwayd, see [`super::upstream`]).
pub(crate) async fn release_wired_as(
    node: &Node,
    record: &PodRecord,
    wired: &PodRecord,
    netns: Option<&str>,
) -> Result<Released, String> {
    let mut exclusive = false;
    if let (Some(dp), Some(spec)) = (&node.datapath, pod_network::spec_of_record(node, wired, netns)) {
        dp.teardown(&spec)
            .await
            .map_err(|e| format!("tearing down the pod network: {e}"))?;
        exclusive = spec.mode == terway_datapath::Mode::ExclusiveEni;
    }
    // out of every policy set before the address can go to another pod
    node.policy
        .forget(&crate::policy::ObjectKey::new(&record.pod.namespace, &record.pod.name))
        .await;
    let released = node
        .ledger
        .release(
            &record.pod,
            Some(&record.container_id),
            node.config().ip_cooldown,
            Durability::Flush,
        )
        .map_err(|e| format!("ledger: {e}"))?;
    if exclusive {
        node.sync_masquerade(false);
    }
    // an address back in the pool (or cooling, with a timer in the reconciler)
    node.pool_changed.notify_waiters();
    node.wake.notify_one();
    Ok(released)
}

/// [`release`] for a pod the runtime or the cluster no longer has (CNI GC,
/// Kubernetes GC), under the pod's lock.
pub async fn release_gone(node: &Node, record: &PodRecord) -> Result<Released, String> {
    let lock = node.pod_lock(&record.pod.key());
    let _guard = lock.lock().await;
    match node.ledger.pod(&record.pod) {
        Some(now) if now.container_id == record.container_id => release(node, &now, None).await,
        _ => Ok(Released::default()), // released meanwhile, or a new sandbox took over
    }
}
