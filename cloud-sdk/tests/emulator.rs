//! The client against the emulator, over real HTTP with real signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use terway_cloud::api::*;
use terway_cloud::emulator::*;
use terway_cloud::*;
use terway_config::defaults::BackoffSpec;
use terway_config::Secret;

const REGION: &str = DEFAULT_REGION;
const LARGE: &str = "vsw-large0000000001";
const SMALL: &str = "vsw-small0000000001";

fn fast_retry() -> BackoffSpec {
    BackoffSpec {
        duration: Duration::from_millis(20),
        steps: 5,
        cap: Some(Duration::from_millis(200)),
        ..DEFAULT_RETRY
    }
}

fn client_with(em: &Emulator, creds: CredentialProvider) -> CloudClient {
    let mut opts = ClientOptions::for_region(REGION, false).with_endpoint(&em.url());
    opts.retry = fast_retry();
    opts.timeout = Duration::from_secs(5);
    CloudClient::new(opts, Arc::new(creds)).unwrap()
}

fn client(em: &Emulator) -> CloudClient {
    client_with(
        em,
        CredentialProvider::static_keys(DEFAULT_ACCESS_KEY_ID, Secret::new(DEFAULT_ACCESS_KEY_SECRET)),
    )
}

fn create(vswitch: &str) -> CreateNetworkInterface {
    CreateNetworkInterface {
        region_id: REGION.into(),
        vswitch_id: vswitch.into(),
        security_group_ids: vec![DEFAULT_SECURITY_GROUP.into()],
        tags: vec![("creator".into(), "terway".into())],
        ..Default::default()
    }
}

fn assign(eni: &str, n: u32) -> AssignPrivateIpAddresses {
    AssignPrivateIpAddresses {
        region_id: REGION.into(),
        network_interface_id: eni.into(),
        secondary_private_ip_address_count: Some(n),
        ..Default::default()
    }
}

fn attach(eni: &str) -> AttachNetworkInterface {
    AttachNetworkInterface {
        region_id: REGION.into(),
        instance_id: DEFAULT_INSTANCE_ID.into(),
        network_interface_id: eni.into(),
    }
}

fn vswitches() -> DescribeVSwitches {
    DescribeVSwitches {
        region_id: REGION.into(),
        ..Default::default()
    }
}

async fn describe_eni(c: &CloudClient, id: &str) -> NetworkInterfaceSet {
    let r = c
        .call(&DescribeNetworkInterfaces {
            region_id: REGION.into(),
            network_interface_ids: vec![id.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    r.network_interface_sets
        .items
        .into_iter()
        .next()
        .expect("the ENI is listed")
}

async fn wait_status(c: &CloudClient, id: &str, status: &str) {
    for _ in 0..100 {
        if describe_eni(c, id).await.status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{id} never became {status}");
}

async fn free_in(c: &CloudClient, vswitch: &str) -> u64 {
    let r = c
        .call(&DescribeVSwitches {
            vswitch_id: Some(vswitch.into()),
            ..vswitches()
        })
        .await
        .unwrap();
    r.vswitches.items[0].available_ip_address_count
}

fn eni_count(em: &Emulator) -> usize {
    em.dump()["enis"].as_array().unwrap().len()
}

#[tokio::test]
async fn every_action_round_trip() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);

    let types = c
        .call(&DescribeInstanceTypes {
            instance_types: vec!["ecs.g6.2xlarge".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let t = &types.instance_types.items[0];
    assert_eq!((t.eni_quantity, t.eni_private_ip_address_quantity), (4, 10));
    assert_eq!(c.instance_type("ecs.g6.2xlarge").await.unwrap().eni_total_quantity, 4);

    let inst = c
        .call(&DescribeInstances {
            region_id: REGION.into(),
            instance_ids: vec![DEFAULT_INSTANCE_ID.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let i = &inst.instances.items[0];
    assert_eq!(i.instance_type, "ecs.g6.2xlarge");
    assert_eq!(i.network_interfaces.items.len(), 1);
    assert_eq!(i.network_interfaces.items[0].kind, "Primary");

    let free_before = free_in(&c, LARGE).await;
    assert_eq!(free_before, 4096 - 4, "a /20 less the 4 reserved addresses");

    let created = c
        .call(&CreateNetworkInterface {
            secondary_private_ip_address_count: Some(1),
            ..create(LARGE)
        })
        .await
        .unwrap();
    let eni = created.eni;
    let id = eni.network_interface_id.clone();
    assert!(id.starts_with("eni-"));
    assert_eq!(eni.status, "Available");
    assert_eq!(eni.private_ip_sets.items.len(), 2);
    assert_eq!(eni.tag("creator"), Some("terway"));

    c.call(&attach(&id)).await.unwrap();
    assert_eq!(describe_eni(&c, &id).await.status, "Attaching");
    wait_status(&c, &id, "InUse").await;

    let ips = c.call(&assign(&id, 3)).await.unwrap().addresses();
    assert_eq!(ips.len(), 3);
    assert_eq!(describe_eni(&c, &id).await.ipv4_addresses().len(), 5);
    assert_eq!(free_in(&c, LARGE).await, free_before - 5);

    let unassign = |ips: Vec<Ipv4Addr>| UnassignPrivateIpAddresses {
        region_id: REGION.into(),
        network_interface_id: id.clone(),
        private_ip_addresses: ips,
    };
    c.call(&unassign(ips[..2].to_vec())).await.unwrap();
    assert_eq!(describe_eni(&c, &id).await.ipv4_addresses().len(), 3);
    // an address that is not there: "already done" on the release path
    let again = c.call(&unassign(vec![ips[0]])).await.unwrap_err();
    assert_eq!(again.code(), Some("InvalidIp.IpUnassigned"));
    assert_eq!(again.class(), ErrorClass::AlreadyDone);

    let delete = DeleteNetworkInterface {
        region_id: REGION.into(),
        network_interface_id: id.clone(),
    };
    let busy = c.call(&delete).await.unwrap_err();
    assert_eq!(
        busy.code(),
        Some("InvalidOperation.InvalidEniState"),
        "delete while attached is refused"
    );

    let detach = DetachNetworkInterface {
        region_id: REGION.into(),
        instance_id: DEFAULT_INSTANCE_ID.into(),
        network_interface_id: id.clone(),
    };
    c.call(&detach).await.unwrap();
    wait_status(&c, &id, "Available").await;
    c.call(&delete).await.unwrap();
    let gone = c.call(&delete).await.unwrap_err();
    assert_eq!(gone.class(), ErrorClass::AlreadyDone);
    assert_eq!(free_in(&c, LARGE).await, free_before, "every address went back");

    // the primary ENI can never be detached
    let primary = c
        .call(&DescribeNetworkInterfaces {
            region_id: REGION.into(),
            instance_id: Some(DEFAULT_INSTANCE_ID.into()),
            kind: Some("Primary".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let primary_id = primary.network_interface_sets.items[0].network_interface_id.clone();
    let e = c
        .call(&DetachNetworkInterface {
            network_interface_id: primary_id,
            ..detach
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidOperation.DetachPrimaryEniNotAllowed"));
}

#[tokio::test]
async fn paging_over_several_pages() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);
    for _ in 0..25 {
        c.call(&create(LARGE)).await.unwrap();
    }
    let req = DescribeNetworkInterfaces {
        region_id: REGION.into(),
        max_results: Some(10),
        ..Default::default()
    };
    let first = c.call(&req).await.unwrap();
    assert_eq!(first.network_interface_sets.items.len(), 10);
    assert!(!first.next_token.is_empty());
    let all = c.describe_network_interfaces_all(req).await.unwrap();
    assert_eq!(all.len(), 26, "25 created plus the primary");
    let ids: std::collections::BTreeSet<_> = all.iter().map(|e| e.network_interface_id.clone()).collect();
    assert_eq!(ids.len(), 26, "no ENI twice across pages");
    assert!(c.stats()["DescribeNetworkInterfaces"].calls >= 4);

    let vsw = c
        .describe_vswitches_all(DescribeVSwitches {
            page_size: Some(1),
            ..vswitches()
        })
        .await
        .unwrap();
    assert_eq!(vsw.len(), 3);
    assert!(c.stats()["DescribeVSwitches"].calls >= 3);

    let tagged = c
        .describe_network_interfaces_all(DescribeNetworkInterfaces {
            region_id: REGION.into(),
            tags: vec![("creator".into(), "terway".into())],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tagged.len(), 25);
}

#[tokio::test]
async fn vswitch_exhaustion_and_quotas() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);
    // the /28 has 16 − 4 = 12 usable addresses
    let eni = c
        .call(&CreateNetworkInterface {
            secondary_private_ip_address_count: Some(9),
            ..create(SMALL)
        })
        .await
        .unwrap()
        .eni;
    let e = c.call(&assign(&eni.network_interface_id, 3)).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidVSwitchId.IpNotEnough"));
    assert_eq!(e.class(), ErrorClass::VSwitchExhausted);
    assert!(e.to_string().contains(SMALL), "{e}");
    c.call(&assign(&eni.network_interface_id, 2)).await.unwrap();
    assert_eq!(
        c.call(&create(SMALL)).await.unwrap_err().class(),
        ErrorClass::VSwitchExhausted
    );

    // per-ENI IP quota: 10 addresses on an attached ecs.g6.2xlarge ENI
    let id = c.call(&create(LARGE)).await.unwrap().eni.network_interface_id;
    c.call(&attach(&id)).await.unwrap();
    wait_status(&c, &id, "InUse").await;
    c.call(&assign(&id, 9)).await.unwrap();
    let e = c.call(&assign(&id, 1)).await.unwrap_err();
    assert_eq!(e.code(), Some("MaxEniPrivateIpsCountExceeded"));
    assert_eq!(e.class(), ErrorClass::InstanceQuota);

    // ENI quota: 4 per instance including the primary
    for _ in 0..2 {
        let id = c.call(&create(LARGE)).await.unwrap().eni.network_interface_id;
        c.call(&attach(&id)).await.unwrap();
    }
    let id = c.call(&create(LARGE)).await.unwrap().eni.network_interface_id;
    let e = c.call(&attach(&id)).await.unwrap_err();
    assert_eq!(e.code(), Some("EniPerInstanceLimitExceeded"));
    assert_eq!(e.class(), ErrorClass::InstanceQuota);
}

#[tokio::test]
async fn throttling_then_success_after_backoff() {
    let scenario = Scenario {
        rate_limits: [("DescribeVSwitches".to_owned(), 120)].into(),
        ..Scenario::default()
    };
    let em = Emulator::start(scenario).await.unwrap();
    let mut opts = ClientOptions::for_region(REGION, false).with_endpoint(&em.url());
    // let the emulator do the throttling
    opts.rate_limits = [("DescribeVSwitches".to_owned(), 100_000)].into();
    opts.retry = BackoffSpec {
        duration: Duration::from_millis(300),
        factor: 2.0,
        jitter: 0.2,
        steps: 6,
        cap: Some(Duration::from_secs(2)),
        initial_delay: Duration::ZERO,
    };
    let creds = CredentialProvider::static_keys(DEFAULT_ACCESS_KEY_ID, Secret::new(DEFAULT_ACCESS_KEY_SECRET));
    let c = CloudClient::new(opts, Arc::new(creds)).unwrap();
    for _ in 0..125 {
        c.call(&vswitches()).await.unwrap();
    }
    let s = &c.stats()["DescribeVSwitches"];
    assert_eq!(s.successes, 125);
    assert!(s.errors.get("Throttling").copied().unwrap_or(0) >= 1, "{s:?}");
    assert!(em.calls()["DescribeVSwitches"]["Throttling"] >= 1);
}

#[tokio::test]
async fn no_retry_on_signature_mismatch() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client_with(
        &em,
        CredentialProvider::static_keys(DEFAULT_ACCESS_KEY_ID, Secret::new("wrong-secret-value")),
    );
    let e = c.call(&vswitches()).await.unwrap_err();
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
    assert_eq!(e.class(), ErrorClass::Fatal);
    assert!(e.to_string().contains("server string to sign is:GET&%2F&"), "{e}");
    assert!(!e.to_string().contains("wrong-secret-value"));
    assert_eq!(c.stats()["DescribeVSwitches"].attempts, 1, "never retried");
    assert_eq!(em.calls()["DescribeVSwitches"]["SignatureDoesNotMatch"], 1);

    let c = client_with(&em, CredentialProvider::static_keys("nobody", Secret::new("x")));
    let e = c.call(&vswitches()).await.unwrap_err();
    assert_eq!((e.code(), e.status()), (Some("InvalidAccessKeyId.NotFound"), Some(404)));
}

#[tokio::test]
async fn dropped_assign_response_assigns_once() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);
    let id = c.call(&create(LARGE)).await.unwrap().eni.network_interface_id;
    em.set_faults(Faults {
        drop_count: 1,
        actions: vec!["AssignPrivateIpAddresses".into()],
        ..Faults::default()
    });
    let r = c.call(&assign(&id, 2)).await.unwrap();
    let s = &c.stats()["AssignPrivateIpAddresses"];
    assert_eq!(s.attempts, 2, "the first answer was lost: {s:?}");
    let listed = describe_eni(&c, &id).await;
    assert_eq!(
        listed.ipv4_addresses().len(),
        3,
        "primary + 2: the retry did not assign again"
    );
    let mut got = r.addresses();
    got.sort();
    let mut on_eni: Vec<Ipv4Addr> = listed.ipv4_addresses()[1..].to_vec();
    on_eni.sort();
    assert_eq!(
        got, on_eni,
        "the replayed answer names the addresses the first attempt assigned"
    );

    // a caller-chosen token (as recorded in an intent) replays across separate calls too
    em.set_faults(Faults {
        drop_count: 5,
        actions: vec!["AssignPrivateIpAddresses".into()],
        ..Faults::default()
    });
    let req = AssignPrivateIpAddresses {
        client_token: Some(new_client_token()),
        ..assign(&id, 1)
    };
    assert!(c.call(&req).await.unwrap_err().is_retryable());
    em.set_faults(Faults::default());
    assert_eq!(c.call(&req).await.unwrap().addresses().len(), 1);
    assert_eq!(describe_eni(&c, &id).await.ipv4_addresses().len(), 4);
}

#[tokio::test]
async fn dropped_create_response_creates_one_eni() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);
    let before = eni_count(&em);
    em.set_faults(Faults {
        drop_count: 1,
        actions: vec!["CreateNetworkInterface".into()],
        ..Faults::default()
    });
    c.call(&create(LARGE)).await.unwrap();
    assert_eq!(c.stats()["CreateNetworkInterface"].attempts, 2);
    assert_eq!(eni_count(&em), before + 1, "exactly one ENI");
    assert_eq!(
        em.calls()["CreateNetworkInterface"]["Success"],
        2,
        "the second answer came from the token record"
    );
}

#[tokio::test]
async fn server_errors_are_retried() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let mut opts = ClientOptions::for_region(REGION, false).with_endpoint(&em.url());
    opts.retry = BackoffSpec {
        steps: 10,
        ..fast_retry()
    };
    let creds = CredentialProvider::static_keys(DEFAULT_ACCESS_KEY_ID, Secret::new(DEFAULT_ACCESS_KEY_SECRET));
    let c = CloudClient::new(opts, Arc::new(creds)).unwrap();
    em.set_faults(Faults {
        error_rate: 0.3,
        ..Faults::default()
    });
    for _ in 0..20 {
        c.call(&vswitches()).await.unwrap();
    }
    let s = &c.stats()["DescribeVSwitches"];
    assert_eq!(s.successes, 20);
    assert!(s.attempts > 20, "some 5xx were retried: {s:?}");
}

#[tokio::test]
async fn ram_role_credentials_refresh_on_expiry() {
    let role = RamRoleSpec {
        name: "TestRole".into(),
        ttl_seconds: 2,
    };
    let em = Emulator::start(Scenario {
        ram_role: Some(role),
        ..Scenario::default()
    })
    .await
    .unwrap();
    let metadata = Arc::new(MetadataClient::new(&em.url(), Duration::from_secs(2)).unwrap());
    let provider =
        Arc::new(CredentialProvider::ram_role(metadata, None).with_refresh_margin(Duration::from_millis(200)));
    let mut opts = ClientOptions::for_region(REGION, false).with_endpoint(&em.url());
    opts.retry = fast_retry();
    let c = CloudClient::new(opts, provider.clone()).unwrap();
    c.call(&vswitches()).await.unwrap();
    let first = provider.get().await.unwrap();
    assert!(first.access_key_id.starts_with("STS."));
    assert!(first.security_token.is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.call(&vswitches()).await.unwrap();
    let second = provider.get().await.unwrap();
    assert_ne!(first.access_key_id, second.access_key_id, "refreshed after expiry");

    // expired STS credentials are refused by the cloud
    let stale = client_with(&em, CredentialProvider::fixed(first.clone()));
    assert_eq!(
        stale.call(&vswitches()).await.unwrap_err().code(),
        Some("InvalidSecurityToken.Expired")
    );

    // the STS token never shows in an error, even where the cloud echoes it
    let wrong = Credentials {
        access_key_secret: Secret::new("not-it"),
        ..second.clone()
    };
    let e = client_with(&em, CredentialProvider::fixed(wrong))
        .call(&vswitches())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
    let token = second.security_token.as_ref().unwrap().expose().to_owned();
    let text = format!("{e} {e:?}");
    assert!(!text.contains(&token), "{text}");
    assert!(
        !text.contains(&terway_cloud::signature::percent_encode(&token)),
        "{text}"
    );
    assert!(text.contains("<redacted>"), "{text}");
}

#[tokio::test]
async fn imdsv2_token_flow() {
    let em = Emulator::start(Scenario {
        metadata_tokens_required: true,
        ..Scenario::default()
    })
    .await
    .unwrap();
    install_crypto_provider();
    let plain = reqwest::get(format!("{}/latest/meta-data/instance-id", em.url()))
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 401, "without a token the service refuses");

    let md = MetadataClient::new(&em.url(), Duration::from_secs(2)).unwrap();
    let id = md.identity().await.unwrap();
    assert_eq!(id.instance_id, DEFAULT_INSTANCE_ID);
    assert_eq!(id.region_id, REGION);
    assert_eq!(id.zone_id, DEFAULT_ZONE);
    assert_eq!(id.instance_type, "ecs.g6.2xlarge");
    // the service restarted and forgot the token: one 401, then a fresh token
    em.revoke_metadata_tokens();
    assert_eq!(md.macs().await.unwrap(), vec![id.primary_mac.clone()]);
    let eni = md.eni(&id.primary_mac).await.unwrap();
    assert_eq!(eni.gateway, "192.168.0.253".parse::<Ipv4Addr>().unwrap());
    assert_eq!(eni.vswitch_cidr, "192.168.0.0/24");
    assert_eq!(eni.private_ipv4s, vec![eni.primary_ip]);

    // metadata reflects attached ENIs and their addresses
    let c = client(&em);
    let new = c
        .call(&CreateNetworkInterface {
            secondary_private_ip_address_count: Some(2),
            ..create(LARGE)
        })
        .await
        .unwrap()
        .eni;
    c.call(&attach(&new.network_interface_id)).await.unwrap();
    wait_status(&c, &new.network_interface_id, "InUse").await;
    assert_eq!(md.macs().await.unwrap().len(), 2);
    let m = md.eni(&new.mac_address).await.unwrap();
    assert_eq!(m.eni_id, new.network_interface_id);
    assert_eq!(m.private_ipv4s.len(), 3);
    assert_eq!(m.gateway, "192.168.31.253".parse::<Ipv4Addr>().unwrap());

    assert!(matches!(
        md.get("no/such/path").await,
        Err(CloudError::Metadata { status: Some(404), .. })
    ));
    let bad = reqwest::Client::new()
        .put(format!("{}/latest/api/token", em.url()))
        .header("X-aliyun-ecs-metadata-token-ttl-seconds", "99999")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test]
async fn metadata_unavailable_is_an_error_not_a_hang() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    em.set_faults(Faults {
        metadata_unavailable: true,
        ..Faults::default()
    });
    let md = MetadataClient::new(&em.url(), Duration::from_secs(1))
        .unwrap()
        .with_attempts(2);
    let e = md.identity().await.unwrap_err();
    assert!(matches!(e, CloudError::Metadata { status: Some(503), .. }), "{e}");
}

#[tokio::test]
async fn describe_lag_hides_fresh_changes() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);
    em.set_faults(Faults {
        describe_lag_ms: 400,
        ..Faults::default()
    });
    let id = c.call(&create(LARGE)).await.unwrap().eni.network_interface_id;
    let r = c
        .call(&DescribeNetworkInterfaces {
            region_id: REGION.into(),
            network_interface_ids: vec![id.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(r.network_interface_sets.items.is_empty(), "not visible yet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(describe_eni(&c, &id).await.network_interface_id, id);
}

/// A writer that keeps what tracing writes, to search it for secrets.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let em = Emulator::start(Scenario::default()).await.unwrap();
    let metadata = Arc::new(MetadataClient::new(&em.url(), Duration::from_secs(2)).unwrap());
    let provider = Arc::new(CredentialProvider::ram_role(metadata, None));
    let mut opts = ClientOptions::for_region(REGION, false).with_endpoint(&em.url());
    opts.retry = fast_retry();
    let c = CloudClient::new(opts, provider.clone()).unwrap();
    em.set_faults(Faults {
        error_rate: 0.5,
        ..Faults::default()
    });
    for _ in 0..5 {
        let _ = c.call(&vswitches()).await;
    }
    em.set_faults(Faults::default());
    let creds = provider.get().await.unwrap();
    // a failing call with a wrong secret, whose error echoes the signed string
    let wrong = Credentials {
        access_key_secret: Secret::new("wrong-secret-for-logs"),
        ..creds.clone()
    };
    let e = client_with(&em, CredentialProvider::fixed(wrong))
        .call(&vswitches())
        .await
        .unwrap_err();
    tracing::error!(error = %e, debug = ?e, "logged like the daemon logs errors");
    tracing::info!(credentials = ?creds, provider = ?provider, "logged like a careless caller would");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("credentials loaded"), "the capture works: {logs}");
    let secret = creds.access_key_secret.expose();
    let token = creds.security_token.as_ref().unwrap().expose();
    for s in [secret, token, "wrong-secret-for-logs", DEFAULT_ACCESS_KEY_SECRET] {
        assert!(!logs.contains(s), "{s} leaked into the logs");
        assert!(
            !logs.contains(&terway_cloud::signature::percent_encode(s)),
            "{s} leaked (encoded)"
        );
    }
}

/// A damaged credential file is not the end: the chain logs why and tries
/// the next source (here the RAM role).
#[tokio::test]
async fn a_damaged_credential_file_falls_through_to_the_next_source_with_a_logged_reason() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    );
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token-config");
    // a keyring of the wrong length, as a damaged or foreign file has
    std::fs::write(
        &file,
        r#"{"access.key.id":"AAAA","access.key.secret":"AAAA","security.token":"AAAA","expiration":"2099-01-01T00:00:00Z","keyring":"short"}"#,
    )
    .unwrap();
    let metadata = Arc::new(MetadataClient::new(&em.url(), Duration::from_secs(2)).unwrap());
    let files = credentials::CredentialFiles {
        token_file: Some(file.clone()),
        addon_secret_dir: None,
    };
    let provider = CredentialProvider::chain(None, None, &files, metadata);
    let creds = provider.get().await.unwrap();
    assert!(creds.access_key_id.starts_with("STS."), "the RAM role's");
    assert_eq!(provider.kind(), "ram-role");
    let client = client_with(&em, provider);
    client.call(&vswitches()).await.unwrap();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("credential-file")
            && text.contains(&file.display().to_string())
            && text.contains("keyring is 5 bytes"),
        "{text}"
    );
    assert!(text.contains("trying the next"), "{text}");
}

/// IPv6 on a vSwitch that has it: addresses come with the ENI and by
/// AssignIpv6Addresses (within the instance type's per-ENI quota), are
/// described and in the metadata, and go back by UnassignIpv6Addresses; a
/// vSwitch without IPv6 refuses, and its metadata answers 404.
#[tokio::test]
async fn ipv6_addresses_round_trip() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let c = client(&em);
    let made = c
        .call(&CreateNetworkInterface {
            ipv6_address_count: Some(2),
            ..create(LARGE)
        })
        .await
        .unwrap();
    let id = made.eni.network_interface_id.clone();
    assert_eq!(made.eni.ipv6_addresses().len(), 2);
    c.call(&attach(&id)).await.unwrap();
    wait_status(&c, &id, "InUse").await;
    let assigned = c
        .call(&AssignIpv6Addresses {
            region_id: REGION.into(),
            network_interface_id: id.clone(),
            ipv6_address_count: 3,
            client_token: Some("v6-token".into()),
        })
        .await
        .unwrap();
    let added = assigned.addresses();
    assert_eq!(added.len(), 3);
    assert!(
        added
            .iter()
            .all(|ip| ip.segments()[..4] == [0x2408, 0x4005, 0x3de, 0x10]),
        "{added:?}"
    );
    let eni = describe_eni(&c, &id).await;
    assert_eq!(eni.ipv6_addresses().len(), 5);
    // ecs.g6.2xlarge: 10 IPv6 per ENI
    let e = c
        .call(&AssignIpv6Addresses {
            region_id: REGION.into(),
            network_interface_id: id.clone(),
            ipv6_address_count: 6,
            client_token: None,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Ipv6CountExceeded"), "{e}");
    let md = MetadataClient::new(&em.url(), Duration::from_secs(2)).unwrap();
    let (gateway, cidr) = md.eni_ipv6(&eni.mac_address).await.unwrap().unwrap();
    assert_eq!(cidr, "2408:4005:3de:10::/64");
    assert!(cidr.parse::<ipnet::Ipv6Net>().unwrap().contains(&gateway));
    let mut listed = md.eni_ipv6_addresses(&eni.mac_address).await.unwrap();
    listed.sort();
    let mut described = eni.ipv6_addresses();
    described.sort();
    assert_eq!(listed, described);
    c.call(&UnassignIpv6Addresses {
        region_id: REGION.into(),
        network_interface_id: id.clone(),
        ipv6_addresses: added.clone(),
    })
    .await
    .unwrap();
    assert_eq!(describe_eni(&c, &id).await.ipv6_addresses().len(), 2);
    // the primary ENI's vSwitch has no IPv6
    let primary = c
        .describe_network_interfaces_all(DescribeNetworkInterfaces {
            region_id: REGION.into(),
            kind: Some("Primary".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .remove(0);
    assert_eq!(md.eni_ipv6(&primary.mac_address).await.unwrap(), None);
    assert!(md.eni_ipv6_addresses(&primary.mac_address).await.unwrap().is_empty());
    let e = c
        .call(&AssignIpv6Addresses {
            region_id: REGION.into(),
            network_interface_id: primary.network_interface_id.clone(),
            ipv6_address_count: 1,
            client_token: None,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Ipv6NotTurnOn"), "{e}");
}
