//! What the end-to-end tests and benchmarks share: the paths of the
//! binaries under test, and a Kubernetes API server to run in a test.

pub mod bolt_writer;
pub mod fault_proxy;
pub mod kube_api;
pub mod netpol_lab;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The path of one of the binaries under test (`terwayd`, `terway-cli`,
/// and terway-cni's `terway`). `cargo test --workspace` builds them beside the tests;
/// when one is missing or older than the sources (e.g. after
/// `cargo test -p terway-tests`), they are built once per test process with
/// the profile the tests were built with, so a test never runs a stale binary.
///
/// # Panics
/// When the build fails: the test cannot run without the binary.
#[allow(clippy::expect_used)]
pub fn binary(name: &str) -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    let dir = CHECKED.get_or_init(|| {
        // target/<profile>/deps/<test> → target/<profile>
        let exe = std::env::current_exe().expect("the test's own path");
        let dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("tests run from target/<profile>/deps")
            .to_path_buf();
        let sources = newest_source();
        let fresh = ["terwayd", "terway", "terway-cli"].iter().all(|b| {
            std::fs::metadata(dir.join(b))
                .and_then(|m| m.modified())
                .is_ok_and(|built| sources.is_none_or(|s| built >= s))
        });
        if !fresh {
            let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug").to_owned();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "--quiet",
                "-p",
                "terway-node",
                "-p",
                "terway-cni",
                "--bins",
                "--features",
                "terway-node/demo",
            ]);
            if profile != "debug" {
                build.args(["--profile", &profile]);
            }
            // what cargo set for this test process: a build script that reads
            // one (ring reads CARGO_MANIFEST_DIR) would otherwise be rebuilt,
            // with all that depends on it, by every test process and `cargo test`
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if key.starts_with("CARGO_PKG_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                    ]
                    .contains(&key.as_ref())
                {
                    build.env_remove(key.as_ref());
                }
            }
            let status = build.status().expect("running cargo build for terway-node's binaries");
            assert!(
                status.success(),
                "cargo build -p terway-node -p terway-cni --bins failed"
            );
        }
        dir
    });
    dir.join(name)
}

/// `terwayd run --standalone --no-datapath --config <config>` as its own
/// process, quiet: the daemon the crash tests and benchmarks kill and restart.
///
/// # Panics
/// When the binary cannot be started.
#[allow(clippy::expect_used)]
pub fn spawn_terwayd(config: &Path) -> std::process::Child {
    Command::new(binary("terwayd"))
        .args(["run", "--standalone", "--no-datapath", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawning terwayd")
}

/// The newest modification time of the Rust sources the binaries are built from.
fn newest_source() -> Option<SystemTime> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest = None;
    let mut stack: Vec<PathBuf> = ["config", "cloud-sdk", "statestore", "datapath", "workspace"]
        .iter()
        .map(|c| root.join(c).join("src"))
        .chain(std::iter::once(root.join("workspace/cni/src")))
        .collect();
    stack.push(root.join("Cargo.lock"));
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if let Ok(t) = meta.modified() {
            newest = newest.max(Some(t));
        }
    }
    newest
}

/// The addresses the cloud shows on ENIs in `status` ("InUse": attached to
/// the instance; "Available": made and left unattached), from the
/// emulator's world dump, secondary ENIs only; and how many such ENIs.
pub fn cloud_addresses(dump: &serde_json::Value, status: &str) -> (std::collections::BTreeSet<String>, usize) {
    let enis: Vec<&serde_json::Value> = dump["enis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["primary"] == false && e["status"] == status)
        .collect();
    let ips = enis
        .iter()
        .flat_map(|e| {
            let secondary = e["secondary_ips"].as_array().into_iter().flatten();
            std::iter::once(&e["primary_ip"])
                .chain(secondary)
                .filter_map(|ip| ip.as_str().map(str::to_owned))
        })
        .collect();
    (ips, enis.len())
}

/// Idle addresses in a node's ledger.
pub fn idle_addresses(ledger: &terway_statestore::Ledger) -> usize {
    ledger
        .snapshot()
        .ips
        .values()
        .filter(|r| r.state == terway_statestore::IpState::Idle)
        .count()
}

/// The emulator's default world with ENIs attaching and detaching in 50 ms
/// (tests that make and retire many ENIs).
pub fn quick_attach() -> terway_cloud::emulator::Scenario {
    use terway_cloud::emulator::{Delays, Scenario};
    Scenario {
        delays: Delays {
            attach_ms: 50,
            detach_ms: 50,
            ..Delays::default()
        },
        ..Scenario::default()
    }
}

/// [`quick_attach`], and a runtime to run it on.
///
/// # Panics
/// When the runtime cannot be built.
#[allow(clippy::unwrap_used, clippy::missing_panics_doc)]
pub fn quick_attach_scenario() -> (tokio::runtime::Runtime, terway_cloud::emulator::Scenario) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (rt, quick_attach())
}

/// An `eni_conf` for a node on the emulator at `url`: its credentials and
/// endpoints, `vswitches` in the default zone, a 1 s sync period and no IP
/// cooldown, then `extra` (`, "key": value, …`; a key given again wins).
pub fn eni_conf(url: &str, vswitches: &[&str], extra: &str) -> String {
    use terway_cloud::emulator::{DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_ZONE};
    let list: Vec<String> = vswitches.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        r#"{{"vswitches": {{"{DEFAULT_ZONE}": [{}]}},
            "access_key": "{DEFAULT_ACCESS_KEY_ID}", "access_secret": "{DEFAULT_ACCESS_KEY_SECRET}",
            "ecs_endpoint": "{url}", "vpc_endpoint": "{url}", "metadata_endpoint": "{url}",
            "ip_pool_sync_period": "1s", "ip_cooldown": "0s" {extra}}}"#,
        list.join(",")
    )
}

/// `GET path` over plain HTTP/1.1: status and body (as the metrics server answers).
///
/// # Panics
/// When the server cannot be reached.
#[allow(clippy::unwrap_used, clippy::missing_panics_doc)]
pub fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // the body may come chunked; the samples are whole lines either way
    (status, body)
}

/// `name{labels}` → value, for every sample line.
pub fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Writes an ACK credential file (`credential_path`) holding `creds` (a role
/// document: `AccessKeyId`, `AccessKeySecret`, `SecurityToken`,
/// `Expiration`), each value AES-128-CBC encrypted under `keyring` (16
/// bytes) with a random IV, as ACK's addon writes it.
///
/// # Panics
/// When `keyring` is not 16 bytes or the file cannot be written.
#[allow(clippy::expect_used)]
pub fn write_token_file(path: &Path, keyring: &str, creds: &serde_json::Value) {
    use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
    use base64::Engine;
    let encrypt = |plain: &str| {
        let iv: [u8; 16] = rand::random();
        let ciphertext = cbc::Encryptor::<aes::Aes128>::new_from_slices(keyring.as_bytes(), &iv)
            .expect("a 16-byte keyring")
            .encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes());
        base64::engine::general_purpose::STANDARD.encode([iv.as_slice(), &ciphertext].concat())
    };
    let field = |k: &str| creds[k].as_str().unwrap_or_default().to_owned();
    let file = serde_json::json!({
        "access.key.id": encrypt(&field("AccessKeyId")),
        "access.key.secret": encrypt(&field("AccessKeySecret")),
        "security.token": encrypt(&field("SecurityToken")),
        "expiration": field("Expiration"),
        "keyring": keyring,
    });
    std::fs::write(path, file.to_string()).expect("writing the credential file");
}

/// A client of the emulator's API with its default keys: another party in the account.
pub fn emulator_client(url: &str) -> terway_cloud::CloudClient {
    use terway_cloud::emulator::{DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_REGION};
    terway_cloud::install_crypto_provider();
    terway_cloud::CloudClient::new(
        terway_cloud::ClientOptions::for_region(DEFAULT_REGION, false).with_endpoint(url),
        std::sync::Arc::new(terway_cloud::CredentialProvider::static_keys(
            DEFAULT_ACCESS_KEY_ID,
            terway_config::Secret::new(DEFAULT_ACCESS_KEY_SECRET),
        )),
    )
    .expect("a client of the emulator")
}

/// An ENI as upstream Terway makes one (tagged `creator=terway`, on
/// vsw-large, `secondaries` addresses besides its primary), attached to the
/// emulator's instance; returned once the cloud shows it InUse.
pub async fn upstream_eni(
    client: &terway_cloud::CloudClient,
    secondaries: u32,
) -> terway_cloud::api::NetworkInterfaceSet {
    use terway_cloud::api::{AttachNetworkInterface, CreateNetworkInterface, DescribeNetworkInterfaces};
    use terway_cloud::emulator::{DEFAULT_INSTANCE_ID, DEFAULT_REGION, DEFAULT_SECURITY_GROUP};
    let id = client
        .call(&CreateNetworkInterface {
            region_id: DEFAULT_REGION.into(),
            vswitch_id: "vsw-large0000000001".into(),
            security_group_ids: vec![DEFAULT_SECURITY_GROUP.into()],
            secondary_private_ip_address_count: (secondaries > 0).then_some(secondaries),
            tags: vec![("creator".into(), "terway".into())],
            ..Default::default()
        })
        .await
        .expect("CreateNetworkInterface")
        .eni
        .network_interface_id;
    client
        .call(&AttachNetworkInterface {
            region_id: DEFAULT_REGION.into(),
            instance_id: DEFAULT_INSTANCE_ID.into(),
            network_interface_id: id.clone(),
        })
        .await
        .expect("AttachNetworkInterface");
    for _ in 0..200 {
        let found = client
            .describe_network_interfaces_all(DescribeNetworkInterfaces {
                region_id: DEFAULT_REGION.into(),
                network_interface_ids: vec![id.clone()],
                ..Default::default()
            })
            .await
            .expect("DescribeNetworkInterfaces");
        if let Some(e) = found.into_iter().find(|e| e.status == "InUse") {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{id} never attached")
}
