//! The level-triggered reconciler: each pass observes the cloud and the
//! ledger, plans from scratch with the pool arithmetic, and acts one cloud
//! step at a time, each preceded by an intent in the ledger.

use super::{Node, CREATOR_TAG, NODE_TAG};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use terway_cloud::api::*;
use terway_cloud::{new_client_token, CloudError, ErrorClass};
use terway_statestore::diff::{self, CloudEni};
use terway_statestore::pool::{self, EniRoom, PoolBounds, PoolCounts};
use terway_statestore::{now_millis, Durability, EniRecord, EniStatus, IntentKind, IpState, ROUTE_TABLE_BASE};

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub adopted_ips: usize,
    pub assigned: usize,
    pub released: usize,
    pub enis_created: usize,
    /// More could be done right away (a step of the plan was done).
    pub progressed: bool,
}

/// Runs passes until the task is aborted: on a wake-up, on the sync period,
/// and straight again while a pass makes progress.
pub async fn run(node: std::sync::Arc<Node>) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let result = pass(&node).await;
        node.reconcile_passes.fetch_add(1, Ordering::Relaxed);
        node.metrics
            .observe_reconcile(started.elapsed(), result.as_ref().err().map(ToString::to_string));
        let again = match result {
            Ok(report) => {
                failures = 0;
                if report != PassReport::default() {
                    tracing::debug!(
                        ?report,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "reconcile pass"
                    );
                }
                report.progressed
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "reconcile pass failed");
                node.set_last_error(Some(e.to_string()));
                false
            }
        };
        if again {
            continue;
        }
        let wait = if failures > 0 {
            Duration::from_millis(200u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(30))
        } else {
            node.config().ip_pool_sync_period
        };
        tokio::select! {
            _ = node.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn bounds(node: &Node) -> PoolBounds {
    let c = node.config();
    PoolBounds {
        min_idle: c.min_pool_size.max(c.min_eni * node.limits.ipv4_per_eni),
        max_idle: c.max_pool_size,
        ips_per_eni: node.limits.ipv4_per_eni,
        max_secondary_enis: c.usable_secondary_enis(node.limits),
        batch: terway_config::defaults::ASSIGN_BATCH_SIZE,
    }
}

/// One pass: observe, reconcile the ledger with the cloud, then grow or shrink.
pub async fn pass(node: &Node) -> anyhow::Result<PassReport> {
    let mut report = PassReport::default();
    let unresolved_eni_work = node
        .ledger
        .intents()
        .iter()
        .any(|i| matches!(i.kind, IntentKind::CreateEni { .. } | IntentKind::AttachEni { .. }));
    if unresolved_eni_work || node.reconcile_passes.load(Ordering::Relaxed) % 20 == 0 {
        delete_leftover_enis(node).await?;
    }
    let cloud_enis = observe(node).await?;
    report.adopted_ips += adopt(node, &cloud_enis).await?;
    node.ledger.promote_cooled(now_millis(), Durability::Lazy)?;
    if node.waiting.load(Ordering::Relaxed) > 0 {
        recheck_set_aside(node).await?;
    }
    if node.config().datapath_mode.is_exclusive() {
        return exclusive_pass(node, report).await;
    }

    let s = node.ledger.snapshot();
    let held = s.ips_held_by_intents();
    let count = |name: &str| {
        s.ips
            .values()
            .filter(|r| r.state.name() == name && !held.contains(&r.ip))
            .count() as u32
    };
    let counts = PoolCounts {
        idle: count("idle"),
        cooling: count("cooling"),
        bound: count("bound"),
        waiting: node.waiting.load(Ordering::Relaxed),
    };
    let rooms: Vec<EniRoom> = {
        let selector = node.vswitches.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.enis
            .values()
            .map(|e| EniRoom {
                eni_id: e.id.clone(),
                ips: s.ips.values().filter(|r| r.eni_id == e.id).count() as u32,
                can_grow: e.status == EniStatus::InUse && e.owner.is_none() && !selector.is_set_aside(&e.vswitch_id),
            })
            .collect()
    };
    let b = bounds(node);
    let plan = pool::plan(counts, b, &rooms);
    if pool::deficit(counts, b) > 0 && plan.assign.is_empty() && plan.new_enis.is_empty() {
        node.set_last_error(Some(format!(
            "no room left on this node: {} of {} secondary ENIs ({}: {} ENIs including the primary) are in use, none can take more addresses",
            rooms.len(),
            b.max_secondary_enis,
            node.identity.instance_type,
            node.limits.enis
        )));
    }
    // one cloud step per pass keeps each pass's picture fresh; the loop runs again while it progresses
    if let Some((eni_id, n)) = plan.assign.first() {
        report.assigned += assign(node, eni_id, *n).await?;
        report.progressed = true;
    } else if let Some(secondaries) = plan.new_enis.first() {
        if create_eni(node, *secondaries).await? {
            report.enis_created += 1;
            report.progressed = true;
        }
    } else if plan.release > 0 {
        if let Some(eni_id) = idle_eni_to_retire(node, &s, plan.release) {
            if retire_eni(node, &eni_id).await? {
                report.released += 1;
                report.progressed = true;
                return Ok(report);
            }
        }
        report.released += release(node, plan.release as usize).await?;
        report.progressed = report.released > 0;
    }
    if report.assigned > 0 || report.enis_created > 0 || report.adopted_ips > 0 {
        node.pool_changed.notify_waiters();
    }
    Ok(report)
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
            if create_eni(node, 0).await? {
                report.enis_created += 1;
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
/// `min_eni` ENIs are always kept.
fn idle_eni_to_retire(node: &Node, s: &terway_statestore::State, surplus: u32) -> Option<String> {
    if (s.enis.len() as u32) <= node.config().min_eni {
        return None;
    }
    let held = s.ips_held_by_intents();
    s.enis
        .values()
        .filter(|e| e.created_by_us && e.status == EniStatus::InUse && e.owner.is_none())
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
            if e.class() != ErrorClass::Retryable {
                node.ledger.complete_intent(detach.id, Durability::Flush)?;
            }
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
    tracing::info!(eni = eni_id, "idle ENI above max_pool_size detached and deleted");
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
    for eni in leftovers {
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
            ips: e.ipv4_addresses().into_iter().map(IpAddr::V4).collect(),
        })
        .collect();
    let d = diff::diff(&snapshot, &view);
    let mut adopted = 0;
    for id in &d.new_enis {
        let Some(e) = cloud.iter().find(|e| &e.network_interface_id == id) else {
            continue;
        };
        adopt_eni(node, e).await?;
    }
    for (eni_id, ips) in &d.adopt {
        if node.ledger.snapshot().enis.contains_key(eni_id) {
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
    let record = EniRecord {
        id: e.network_interface_id.clone(),
        mac: e.mac_address.clone(),
        vswitch_id: e.vswitch_id.clone(),
        gateway: IpAddr::V4(md.gateway),
        cidr: md.vswitch_cidr.clone(),
        primary_ip: e.private_ip_address.parse()?,
        status: EniStatus::InUse,
        route_table: ROUTE_TABLE_BASE + e.attachment.device_index,
        created_by_us: e.tag(CREATOR_TAG.0) == Some(CREATOR_TAG.1),
        owner: None,
    };
    if let Some(dp) = &node.datapath {
        dp.ensure_eni(&eni_link(node, &record)?, node.node_ip).await?;
    }
    tracing::info!(eni = %record.id, vswitch = %record.vswitch_id, table = record.route_table, "ENI adopted");
    node.ledger.adopt_eni(record, Durability::Flush)?;
    Ok(())
}

pub(crate) fn eni_link(node: &Node, e: &EniRecord) -> anyhow::Result<terway_datapath::EniLink> {
    let IpAddr::V4(gateway) = e.gateway else {
        anyhow::bail!("ENI {} has an IPv6 gateway", e.id)
    };
    Ok(terway_datapath::EniLink {
        mac: terway_datapath::names::parse_mac(&e.mac)
            .ok_or_else(|| anyhow::anyhow!("ENI {} has a bad MAC {:?}", e.id, e.mac))?,
        route_table: e.route_table,
        gateway,
        cidr: e.cidr.parse()?,
        mtu: node.config().mtu,
    })
}

/// The error as the node reports it: what failed, the code, the request id.
/// Failures that are not retried on their own become a node Event too.
fn note_failure(node: &Node, e: &CloudError) {
    node.set_last_error(Some(e.to_string()));
    if !matches!(e.class(), ErrorClass::Retryable | ErrorClass::VSwitchExhausted) {
        // without the request id, so repeats of one failure count up one Event (the log has each id)
        let text = e.to_string();
        let message = text.split(" [RequestId:").next().unwrap_or(&text).to_owned();
        node.tell(crate::cluster::Notice::NodeEvent {
            warning: true,
            reason: "AllocIPFailed",
            message,
        });
    }
}

/// AssignPrivateIpAddresses on `eni_id`, behind an intent.
async fn assign(node: &Node, eni_id: &str, n: u32) -> anyhow::Result<usize> {
    let token = new_client_token();
    let intent = node.ledger.record_intent(
        IntentKind::AssignIps {
            eni_id: eni_id.into(),
            count: n,
        },
        Some(token.clone()),
    )?;
    let req = AssignPrivateIpAddresses {
        region_id: node.identity.region_id.clone(),
        network_interface_id: eni_id.into(),
        secondary_private_ip_address_count: Some(n),
        client_token: Some(token),
        ..Default::default()
    };
    match node.cloud.call(&req).await {
        Ok(resp) => {
            let ips: Vec<IpAddr> = resp.addresses().into_iter().map(IpAddr::V4).collect();
            let fresh = node.ledger.adopt_ips(eni_id, &ips, Durability::Flush)?;
            node.ledger.complete_intent(intent.id, Durability::Flush)?;
            tracing::info!(eni = eni_id, count = fresh.len(), request_id = %resp.request_id, "addresses assigned");
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
            tracing::warn!(eni = eni_id, vswitch = %vswitch, error = %e, request_id = e.request_id().unwrap_or(""), "assign failed");
            note_failure(node, &e);
            match e.class() {
                ErrorClass::VSwitchExhausted => {
                    node.set_vswitch_aside(&vswitch, &e.to_string());
                    node.ledger.complete_intent(intent.id, Durability::Flush)?;
                }
                // the outcome is unknown: the intent stays until the cloud tells
                ErrorClass::Retryable => {}
                _ => node.ledger.complete_intent(intent.id, Durability::Flush)?,
            }
            Ok(0)
        }
    }
}

/// Creates and attaches an ENI on the first vSwitch that has room.
async fn create_eni(node: &Node, secondaries: u32) -> anyhow::Result<bool> {
    let config = node.config();
    let configured = config.vswitches_in_zone(&node.identity.zone_id);
    let configured: Vec<String> = if configured.is_empty() {
        vec![node.identity.vswitch_id.clone()]
    } else {
        configured.to_vec()
    };
    let mut free = HashMap::new();
    if node.config().vswitch_selection_policy == terway_config::VSwitchSelectionPolicy::Ordered {
        for v in node
            .cloud
            .describe_vswitches_all(DescribeVSwitches {
                region_id: node.identity.region_id.clone(),
                zone_id: Some(node.identity.zone_id.clone()),
                ..Default::default()
            })
            .await?
        {
            free.insert(v.vswitch_id, v.available_ip_address_count);
        }
    }
    let candidates = node
        .vswitches
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .candidates(&configured, node.config().vswitch_selection_policy, &free);
    if candidates.is_empty() {
        node.set_last_error(Some(format!(
            "no vSwitch of zone {} has room (configured: {}; set aside after running out: {})",
            node.identity.zone_id,
            configured.join(", "),
            node.vswitches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_aside_now()
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
        return Ok(false);
    }
    let mut tags: Vec<(String, String)> = vec![
        (CREATOR_TAG.0.into(), CREATOR_TAG.1.into()),
        (NODE_TAG.into(), node.identity.instance_id.clone()),
    ];
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
            security_group_ids: node.security_groups.clone(),
            secondary_private_ip_address_count: (secondaries > 0).then_some(secondaries),
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
                match e.class() {
                    ErrorClass::VSwitchExhausted => {
                        node.set_vswitch_aside(&vswitch, &e.to_string());
                        node.ledger.complete_intent(intent.id, Durability::Flush)?;
                        continue;
                    }
                    ErrorClass::Retryable => return Ok(false),
                    _ => {
                        node.ledger.complete_intent(intent.id, Durability::Flush)?;
                        return Ok(false);
                    }
                }
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
            if e.class() != ErrorClass::Retryable {
                node.ledger.complete_intent(attach.id, Durability::Flush)?;
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
            let ips: Vec<IpAddr> = eni.ipv4_addresses().into_iter().map(IpAddr::V4).collect();
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
        .filter(|r| matches!(r.state, IpState::Idle | IpState::Releasing) && !held.contains(&r.ip))
        .filter(|r| {
            s.enis
                .get(&r.eni_id)
                .is_some_and(|e| e.primary_ip != r.ip && e.owner.is_none())
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
    let mut marked = node.ledger.mark_releasing(&chosen, Durability::Flush)?;
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
    let result = node
        .cloud
        .call(&UnassignPrivateIpAddresses {
            region_id: node.identity.region_id.clone(),
            network_interface_id: eni_id.into(),
            private_ip_addresses: v4,
        })
        .await;
    match result {
        Ok(_) => {}
        Err(e) if e.class() == ErrorClass::AlreadyDone => {}
        Err(e) => {
            tracing::warn!(eni = eni_id, error = %e, "unassign failed");
            if e.class() != ErrorClass::Retryable {
                node.ledger.complete_intent(intent.id, Durability::Flush)?;
            }
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
