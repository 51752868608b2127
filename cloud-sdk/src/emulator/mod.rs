//! An emulator of the ECS/VPC OpenAPI and the ECS metadata service, over
//! real HTTP with real signatures. [`Emulator::start`] runs one in-process
//! on an ephemeral port (tests, the demo); the `aliyun-emulator` binary
//! serves one on a chosen address.

mod scenario;
mod server;
mod world;

pub use scenario::*;
pub use world::{AttachmentEvent, EniStatus};

use server::{lock, Shared, DROP_HEADER};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// Called when an ENI becomes InUse on, or leaves, an instance — the
/// simulated node uses it to hot-plug a link carrying the ENI's MAC.
pub trait HotPlug: Send + Sync {
    fn on_event(&self, event: &AttachmentEvent);
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl Emulator {
    /// Starts on `127.0.0.1` with an ephemeral port.
    pub async fn start(scenario: Scenario) -> Result<Self, String> {
        Self::bind("127.0.0.1:0".parse().map_err(|_| "bad address".to_owned())?, scenario).await
    }

    pub async fn bind(addr: SocketAddr, scenario: Scenario) -> Result<Self, String> {
        let shared = Arc::new(Shared::new(&scenario)?);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(serve(listener, shared.clone(), rx.clone()));
        tokio::spawn(tick(shared.clone(), rx));
        Ok(Self { addr, shared, shutdown })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: the OpenAPI endpoint and the metadata base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The whole world as JSON (what `GET /__emulator/world` returns).
    pub fn dump(&self) -> serde_json::Value {
        self.shared.tick();
        dump(&self.shared)
    }

    /// STS credentials the gateway accepts (with their SecurityToken) until
    /// `ttl` passes — what ACK's addon writes into the credential file — as
    /// the metadata role document: `AccessKeyId`, `AccessKeySecret`,
    /// `SecurityToken`, `Expiration`.
    pub fn issue_sts_credentials(&self, ttl: std::time::Duration) -> serde_json::Value {
        let role = scenario::RamRoleSpec {
            name: "addon".into(),
            ttl_seconds: ttl.as_secs(),
        };
        serde_json::from_str(&server::issue_role_credentials(&self.shared, &role)).unwrap_or_default()
    }

    pub fn faults(&self) -> Faults {
        lock(&self.shared.faults).clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        apply_faults(&self.shared, faults);
    }

    /// Adds a vSwitch to the VPC while running.
    pub fn add_vswitch(&self, id: &str, zone_id: &str, cidr: &str) -> Result<(), String> {
        lock(&self.shared.world).add_vswitch(id, zone_id, cidr)
    }

    /// Another tenant takes `n` free addresses of a vSwitch for good.
    pub fn take_addresses(&self, vswitch_id: &str, n: usize) -> Result<Vec<std::net::Ipv4Addr>, String> {
        lock(&self.shared.world).take_addresses(vswitch_id, n)
    }

    /// Free addresses of a vSwitch right now.
    pub fn available_addresses(&self, vswitch_id: &str) -> Option<u64> {
        lock(&self.shared.world)
            .vswitches
            .get(vswitch_id)
            .map(|v| v.available())
    }

    pub fn add_hotplug_hook(&self, hook: Arc<dyn HotPlug>) {
        lock(&self.shared.hooks).push(hook);
    }

    /// Answered calls: action → result code → count.
    pub fn calls(&self) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> {
        lock(&self.shared.calls).clone()
    }

    /// Requests for `action` received and not yet answered.
    pub fn in_flight(&self, action: &str) -> u64 {
        lock(&self.shared.in_flight).get(action).copied().unwrap_or(0)
    }

    /// Forgets every IMDSv2 token handed out, as a metadata service restart would.
    pub fn revoke_metadata_tokens(&self) {
        lock(&self.shared.metadata_tokens).clear();
    }

    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn dump(s: &Shared) -> serde_json::Value {
    let mut v = lock(&s.world).dump();
    v["api_calls"] = serde_json::json!(*lock(&s.calls));
    v["faults"] = serde_json::to_value(lock(&s.faults).clone()).unwrap_or_default();
    v
}

pub(crate) fn apply_faults(s: &Shared, faults: Faults) {
    lock(&s.world).set_describe_lag(Duration::from_millis(faults.describe_lag_ms), Instant::now());
    *lock(&s.faults) = faults;
}

/// Applies delayed ENI transitions promptly, so hot-plug hooks fire on time.
async fn tick(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = interval.tick() => shared.tick(),
            _ = stop.changed() => return,
        }
    }
}

/// hyper's accept loop around the axum router. A response marked with
/// `DROP_HEADER` becomes a service error, which makes hyper close the
/// connection without answering: a lost response, after the action took effect.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let app = server::router(shared);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let app = app.clone();
        let mut conn_stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                async move {
                    let resp = app
                        .oneshot(req.map(axum::body::Body::new))
                        .await
                        .unwrap_or_else(|e| match e {});
                    if resp.headers().contains_key(DROP_HEADER) {
                        Err(std::io::Error::other("response dropped by fault injection"))
                    } else {
                        Ok(resp)
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_stop.changed() => {}
            }
        });
    }
}
