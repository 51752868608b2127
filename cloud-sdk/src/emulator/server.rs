//! The emulator's HTTP side: request verification as the OpenAPI gateway
//! does it, fault injection, the metadata service and the control endpoint.

use super::scenario::{Faults, RamRoleSpec, Scenario};
use super::world::{ApiError, AttachmentEvent, World};
use super::HotPlug;
use crate::ratelimit::RateLimiter;
use crate::signature::{self, Params};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// A response carrying this header is not sent: the connection is closed instead.
pub(crate) const DROP_HEADER: &str = "x-emulator-drop-response";
const TIMESTAMP_SKEW: Duration = Duration::from_secs(15 * 60);
const NONCE_WINDOW: Duration = Duration::from_secs(31 * 60);

#[derive(Debug, Clone)]
struct AccessKey {
    secret: String,
    /// STS credentials also need their SecurityToken, until they expire.
    security_token: Option<String>,
    expires: Option<SystemTime>,
}

pub(crate) struct Shared {
    pub world: Mutex<World>,
    access_keys: Mutex<HashMap<String, AccessKey>>,
    nonces: Mutex<HashMap<String, Instant>>,
    pub faults: Mutex<Faults>,
    /// Requests received and not yet answered, by action.
    pub in_flight: Mutex<BTreeMap<String, u64>>,
    limiter: Option<RateLimiter>,
    /// action → result code ("Success" or the error code) → count
    pub calls: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    pub metadata_tokens: Mutex<HashMap<String, Instant>>,
    ram_role: Option<RamRoleSpec>,
    issued_role_key: Mutex<Option<(String, SystemTime)>>,
    metadata_instance: String,
    tokens_required: bool,
    pub hooks: Mutex<Vec<Arc<dyn HotPlug>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("metadata_instance", &self.metadata_instance)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(s: &Scenario) -> Result<Self, String> {
        let world = World::new(s)?;
        let metadata_instance = s
            .metadata_instance
            .clone()
            .or_else(|| s.instances.first().map(|i| i.id.clone()))
            .unwrap_or_default();
        let access_keys = s
            .credentials
            .iter()
            .map(|c| {
                (
                    c.access_key_id.clone(),
                    AccessKey {
                        secret: c.access_key_secret.clone(),
                        security_token: None,
                        expires: None,
                    },
                )
            })
            .collect();
        Ok(Self {
            world: Mutex::new(world),
            access_keys: Mutex::new(access_keys),
            nonces: Mutex::new(HashMap::new()),
            faults: Mutex::new(s.faults.clone()),
            in_flight: Mutex::new(BTreeMap::new()),
            limiter: (!s.rate_limits.is_empty()).then(|| RateLimiter::new(s.rate_limits.clone(), u32::MAX)),
            calls: Mutex::new(BTreeMap::new()),
            metadata_tokens: Mutex::new(HashMap::new()),
            ram_role: s.ram_role.clone(),
            issued_role_key: Mutex::new(None),
            metadata_instance,
            tokens_required: s.metadata_tokens_required,
            hooks: Mutex::new(Vec::new()),
        })
    }

    /// Applies due ENI transitions and runs the hot-plug hooks for them.
    pub fn tick(&self) {
        let events = {
            let mut w = lock(&self.world);
            w.advance(Instant::now());
            std::mem::take(&mut w.events)
        };
        self.run_hooks(events);
    }

    fn run_hooks(&self, events: Vec<AttachmentEvent>) {
        if events.is_empty() {
            return;
        }
        let hooks = lock(&self.hooks).clone();
        for event in &events {
            for hook in &hooks {
                hook.on_event(event);
            }
        }
    }

    fn count(&self, action: &str, code: &str) {
        *lock(&self.calls)
            .entry(action.to_owned())
            .or_default()
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", any(rpc))
        .route("/latest/api/token", any(metadata_token))
        .route("/latest/meta-data/{*path}", get(metadata))
        .route("/latest/meta-data/", get(metadata_root))
        // the metadata service as another instance sees it (many nodes on one emulator)
        .route("/instance/{instance}/latest/api/token", any(metadata_token))
        .route("/instance/{instance}/latest/meta-data/{*path}", get(instance_metadata))
        .route("/__emulator/world", get(control_world))
        .route("/__emulator/calls", get(control_calls))
        .route("/__emulator/faults", get(control_get_faults).put(control_put_faults))
        .route("/__emulator/vswitches", post(control_add_vswitch))
        .with_state(shared)
}

fn new_request_id() -> String {
    crate::client::new_client_token().to_uppercase()
}

fn error_response(status: u16, request_id: &str, code: &str, message: &str) -> Response {
    let body = json!({
        "RequestId": request_id,
        "HostId": "ecs.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": format!("https://api.aliyun.com/troubleshoot?q={code}&requestId={request_id}"),
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [("x-acs-request-id", request_id.to_owned())], Json(body)).into_response()
}

async fn rpc(State(s): State<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let request_id = new_request_id();
    let fail = |e: ApiError| error_response(e.status, &request_id, &e.code, &e.message);
    if method != Method::GET && method != Method::POST {
        return fail(ApiError::new(
            405,
            "UnsupportedHTTPMethod",
            format!("HTTP method {method} is not supported."),
        ));
    }
    let mut params = match signature::parse_query(uri.query().unwrap_or(""), false) {
        Ok(p) => p,
        Err(e) => return fail(ApiError::new(400, "InvalidParameter", e)),
    };
    if method == Method::POST && !body.is_empty() {
        let is_form = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return fail(ApiError::new(
                400,
                "InvalidParameter",
                "a POST body must be application/x-www-form-urlencoded",
            ));
        }
        let text = String::from_utf8_lossy(&body);
        match signature::parse_query(&text, true) {
            Ok(form) => params.extend(form),
            Err(e) => return fail(ApiError::new(400, "InvalidParameter", e)),
        }
    }
    let action = params.get("Action").cloned().unwrap_or_default();
    let _counted = InFlight::enter(&s, &action);
    let delay = |per_action: &BTreeMap<String, u64>| {
        per_action
            .get(&action)
            .or_else(|| per_action.get("*"))
            .copied()
            .unwrap_or(0)
    };
    let (latency, answer_delay) = {
        let f = lock(&s.faults);
        (delay(&f.latency_ms), delay(&f.answer_delay_ms))
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let outcome = handle(&s, method.as_str(), &params, &action);
    let events = std::mem::take(&mut lock(&s.world).events);
    s.run_hooks(events);
    if answer_delay > 0 {
        tokio::time::sleep(Duration::from_millis(answer_delay)).await;
    }
    match outcome {
        Ok((mut body, drop)) => {
            s.count(&action, "Success");
            if let Some(obj) = body.as_object_mut() {
                obj.insert("RequestId".into(), json!(request_id));
            }
            let mut resp = (StatusCode::OK, [("x-acs-request-id", request_id.clone())], Json(body)).into_response();
            if drop {
                resp.headers_mut()
                    .insert(DROP_HEADER, axum::http::HeaderValue::from_static("1"));
            }
            resp
        }
        Err(e) => {
            s.count(if action.is_empty() { "(none)" } else { &action }, &e.code);
            fail(e)
        }
    }
}

/// Counts a request as in flight until it is answered (or its connection dropped).
struct InFlight<'a> {
    shared: &'a Shared,
    action: String,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared, action: &str) -> Self {
        *lock(&shared.in_flight).entry(action.to_owned()).or_default() += 1;
        Self {
            shared,
            action: action.to_owned(),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.shared.in_flight).get_mut(&self.action) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Verifies the request, injects faults, runs the action. `Ok((body, drop))`.
fn handle(s: &Shared, method: &str, p: &Params, action: &str) -> Result<(Value, bool), ApiError> {
    for name in [
        "Action",
        "Version",
        "AccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
    ] {
        if p.get(name).is_none_or(|v| v.is_empty()) {
            return Err(ApiError::missing(name));
        }
    }
    if p["SignatureMethod"] != "HMAC-SHA1" {
        return Err(ApiError::invalid(
            "SignatureMethod",
            &p["SignatureMethod"],
            "only HMAC-SHA1 is supported",
        ));
    }
    if p["SignatureVersion"] != "1.0" {
        return Err(ApiError::invalid(
            "SignatureVersion",
            &p["SignatureVersion"],
            "only 1.0 is supported",
        ));
    }
    let expected_version = if action == "DescribeVSwitches" {
        "2016-04-28"
    } else {
        "2014-05-26"
    };
    if p["Version"] != expected_version {
        return Err(ApiError::new(
            400,
            "InvalidVersion",
            format!(
                "Specified parameter Version {:?} is not valid for {action}.",
                p["Version"]
            ),
        ));
    }
    let access_key_id = &p["AccessKeyId"];
    let key = lock(&s.access_keys)
        .get(access_key_id)
        .cloned()
        .ok_or_else(|| ApiError::new(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found."))?;
    let timestamp = crate::utc::parse(&p["Timestamp"]).ok_or_else(|| {
        ApiError::new(
            400,
            "InvalidTimeStamp.Format",
            format!(
                "Specified time stamp {:?} is not in the yyyy-MM-ddTHH:mm:ssZ format.",
                p["Timestamp"]
            ),
        )
    })?;
    let offset = lock(&s.faults).clock_offset_s;
    let shift = Duration::from_secs(offset.unsigned_abs());
    let now = if offset >= 0 {
        SystemTime::now() + shift
    } else {
        SystemTime::now() - shift
    };
    let skew = now.duration_since(timestamp).unwrap_or_else(|e| e.duration());
    if skew > TIMESTAMP_SKEW {
        return Err(ApiError::new(
            400,
            "InvalidTimeStamp.Expired",
            format!(
                "Specified time stamp or date value is expired (server time {}).",
                crate::utc::format(now)
            ),
        ));
    }
    let string_to_sign = signature::string_to_sign(method, p);
    let expected = signature::sign(&key.secret, &string_to_sign);
    if !signature::signatures_match(&expected, &p["Signature"]) {
        return Err(ApiError::new(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        ));
    }
    if let Some(token) = &key.security_token {
        if p.get("SecurityToken") != Some(token) {
            return Err(ApiError::new(
                400,
                "InvalidSecurityToken.Mismatch",
                "The SecurityToken does not belong to this AccessKeyId.",
            ));
        }
        if key.expires.is_some_and(|exp| exp <= now) {
            return Err(ApiError::new(
                400,
                "InvalidSecurityToken.Expired",
                "Specified SecurityToken is expired.",
            ));
        }
    }
    {
        let mut nonces = lock(&s.nonces);
        let now = Instant::now();
        if nonces.len() > 100_000 {
            nonces.retain(|_, at| now.duration_since(*at) < NONCE_WINDOW);
        }
        let nonce = p["SignatureNonce"].clone();
        if nonces
            .get(&nonce)
            .is_some_and(|at| now.duration_since(*at) < NONCE_WINDOW)
        {
            return Err(ApiError::new(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        nonces.insert(nonce, now);
    }
    if let Some(limiter) = &s.limiter {
        if !limiter.try_take(action) {
            return Err(ApiError::new(
                400,
                "Throttling",
                "Request was denied due to request throttling.",
            ));
        }
    }
    let (error_rate, drop_rate, throttle_rate, applies) = {
        let f = lock(&s.faults);
        (
            f.error_rate,
            f.drop_rate,
            f.throttle_rate,
            f.actions.is_empty() || f.actions.iter().any(|a| a == action),
        )
    };
    if applies && throttle_rate > 0.0 && rand::random::<f64>() < throttle_rate {
        return Err(ApiError::new(
            400,
            "Throttling",
            "Request was denied due to request throttling.",
        ));
    }
    if applies && error_rate > 0.0 && rand::random::<f64>() < error_rate {
        return Err(if rand::random::<bool>() {
            ApiError::new(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            )
        } else {
            ApiError::new(
                500,
                "InternalError",
                "The request processing has failed due to some unknown error, exception or failure.",
            )
        });
    }
    let ignore_filters = lock(&s.faults).ignore_filters && action == "DescribeNetworkInterfaces";
    let body = if ignore_filters {
        // a gateway that drops every filter: the whole region's ENIs
        let unfiltered: Params = p
            .iter()
            .filter(|(k, _)| {
                !["Status", "Type", "InstanceId", "VSwitchId", "NetworkInterfaceId"]
                    .iter()
                    .any(|f| k.as_str() == *f || k.starts_with(&format!("{f}.")))
                    && !k.starts_with("Tag.")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        lock(&s.world).dispatch(action, &unfiltered, Instant::now())?
    } else {
        lock(&s.world).dispatch(action, p, Instant::now())?
    };
    let drop = applies && {
        let mut f = lock(&s.faults);
        if f.drop_count > 0 {
            f.drop_count -= 1;
            true
        } else {
            drop_rate > 0.0 && rand::random::<f64>() < drop_rate
        }
    };
    Ok((body, drop))
}

// ---- metadata service ----

async fn metadata_token(State(s): State<Arc<Shared>>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::PUT {
        return (StatusCode::METHOD_NOT_ALLOWED, "use PUT").into_response();
    }
    if lock(&s.faults).metadata_unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response();
    }
    if headers.contains_key("x-forwarded-for") {
        return (StatusCode::FORBIDDEN, "forwarded requests are refused").into_response();
    }
    let ttl = headers
        .get("x-aliyun-ecs-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|t| (1..=21_600).contains(t));
    let Some(ttl) = ttl else {
        return (
            StatusCode::BAD_REQUEST,
            "X-aliyun-ecs-metadata-token-ttl-seconds must be 1..21600",
        )
            .into_response();
    };
    let token = format!("emu-md-{}", crate::client::new_client_token());
    lock(&s.metadata_tokens).insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    token.into_response()
}

async fn metadata_root(state: State<Arc<Shared>>, headers: HeaderMap) -> Response {
    metadata(state, Path(String::new()), headers).await
}

async fn metadata(State(s): State<Arc<Shared>>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let instance = s.metadata_instance.clone();
    serve_metadata(&s, &instance, &path, &headers)
}

async fn instance_metadata(
    State(s): State<Arc<Shared>>,
    Path((instance, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve_metadata(&s, &instance, &path, &headers)
}

fn serve_metadata(s: &Shared, instance: &str, path: &str, headers: &HeaderMap) -> Response {
    if lock(&s.faults).metadata_unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, "unavailable").into_response();
    }
    match headers.get("x-aliyun-ecs-metadata-token").and_then(|v| v.to_str().ok()) {
        Some(token) => {
            let valid = lock(&s.metadata_tokens)
                .get(token)
                .is_some_and(|exp| *exp > Instant::now());
            if !valid {
                return (StatusCode::UNAUTHORIZED, "invalid or expired metadata token").into_response();
            }
        }
        None if s.tokens_required => return (StatusCode::UNAUTHORIZED, "a metadata token is required").into_response(),
        None => {}
    }
    s.tick();
    match metadata_value(s, instance, path.trim_end_matches('/')) {
        Some(text) => text.into_response(),
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

fn metadata_value(s: &Shared, instance: &str, path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("ram/security-credentials") {
        let role = s.ram_role.as_ref()?;
        let rest = rest.trim_start_matches('/');
        if rest.is_empty() {
            return Some(role.name.clone());
        }
        return (rest == role.name).then(|| issue_role_credentials(s, role));
    }
    let w = lock(&s.world);
    let instance = w.instances.get(instance)?;
    let primary = w.enis.get(&instance.primary_eni)?;
    let vsw = w.vswitches.get(&instance.vswitch_id)?;
    let simple = match path {
        "instance-id" => Some(instance.id.clone()),
        "region-id" => Some(w.region_id.clone()),
        "zone-id" => Some(instance.zone_id.clone()),
        "instance/instance-type" => Some(instance.instance_type.clone()),
        "vpc-id" => Some(w.vpc_id.clone()),
        "vpc-cidr-block" => Some(w.vpc_cidr.clone()),
        "vswitch-id" => Some(vsw.id.clone()),
        "vswitch-cidr-block" => Some(vsw.net.to_string()),
        "private-ipv4" => Some(primary.primary_ip.to_string()),
        "mac" => Some(primary.mac.clone()),
        "network-type" => Some("vpc".into()),
        "network/interfaces/macs" => Some(
            w.attached_enis(&instance.id)
                .iter()
                .map(|e| format!("{}/", e.mac))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    };
    if simple.is_some() {
        return simple;
    }
    let rest = path.strip_prefix("network/interfaces/macs/")?;
    let (mac, leaf) = rest.split_once('/').unwrap_or((rest, ""));
    let enis = w.attached_enis(&instance.id);
    let eni = enis.iter().find(|e| e.mac == mac)?;
    let v = w.vswitches.get(&eni.vswitch_id)?;
    match leaf {
        "" => Some(
            [
                "network-interface-id",
                "primary-ip-address",
                "netmask",
                "gateway",
                "vswitch-id",
                "vswitch-cidr-block",
                "vpc-id",
                "vpc-cidr-block",
                "private-ipv4s",
            ]
            .iter()
            .chain(if v.net6.is_some() {
                &["ipv6s", "ipv6-gateway", "vswitch-ipv6-cidr-block"][..]
            } else {
                &[]
            })
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
        ),
        "network-interface-id" => Some(eni.id.clone()),
        "primary-ip-address" => Some(eni.primary_ip.to_string()),
        "netmask" => Some(v.net.netmask().to_string()),
        "gateway" => Some(v.gateway().to_string()),
        "vswitch-id" => Some(v.id.clone()),
        "vswitch-cidr-block" => Some(v.net.to_string()),
        "vpc-id" => Some(w.vpc_id.clone()),
        "vpc-cidr-block" => Some(w.vpc_cidr.clone()),
        "private-ipv4s" => {
            let ips: Vec<String> = std::iter::once(eni.primary_ip)
                .chain(eni.secondary_ips.iter().copied())
                .map(|ip| ip.to_string())
                .collect();
            serde_json::to_string(&ips).ok()
        }
        // 404 on a vSwitch without IPv6, as the real service answers
        "ipv6s" if v.net6.is_some() => {
            let ips: Vec<String> = eni.ipv6s.iter().map(ToString::to_string).collect();
            serde_json::to_string(&ips).ok()
        }
        "ipv6-gateway" => v.gateway6().map(|g| g.to_string()),
        "vswitch-ipv6-cidr-block" => v.net6.map(|n| n.to_string()),
        _ => None,
    }
}

/// Hands out STS credentials for the role: the same ones until half their
/// lifetime is gone, then new ones (as IMDS rotates them before expiry).
pub(crate) fn issue_role_credentials(s: &Shared, role: &RamRoleSpec) -> String {
    let ttl = Duration::from_secs(role.ttl_seconds.max(1));
    let now = SystemTime::now();
    let mut issued = lock(&s.issued_role_key);
    let reuse = issued
        .as_ref()
        .filter(|(_, exp)| exp.duration_since(now).is_ok_and(|left| left > ttl / 2))
        .cloned();
    let keys = lock(&s.access_keys);
    let (id, key) = match reuse.and_then(|(id, _)| keys.get(&id).cloned().map(|k| (id, k))) {
        Some(found) => found,
        None => {
            drop(keys);
            let id = format!("STS.emu{}", &crate::client::new_client_token().replace('-', "")[..20]);
            let key = AccessKey {
                secret: crate::client::new_client_token(),
                security_token: Some(format!("CAIS{}", crate::client::new_client_token())),
                expires: Some(super::world::expiry(ttl)),
            };
            lock(&s.access_keys).insert(id.clone(), key.clone());
            *issued = Some((id.clone(), key.expires.unwrap_or(now)));
            (id, key)
        }
    };
    json!({
        "Code": "Success",
        "AccessKeyId": id,
        "AccessKeySecret": key.secret,
        "SecurityToken": key.security_token,
        "Expiration": crate::utc::format(key.expires.unwrap_or(now)),
        "LastUpdated": crate::utc::format(now),
    })
    .to_string()
}

// ---- control endpoint ----

async fn control_world(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.tick();
    Json(super::dump(&s))
}

async fn control_calls(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!(*lock(&s.calls)))
}

async fn control_get_faults(State(s): State<Arc<Shared>>) -> Json<Faults> {
    Json(lock(&s.faults).clone())
}

async fn control_put_faults(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            super::apply_faults(&s, f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad faults: {e}")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct NewVSwitch {
    id: String,
    zone_id: String,
    cidr: String,
}

async fn control_add_vswitch(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let v: NewVSwitch = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad vSwitch: {e}")).into_response(),
    };
    match lock(&s.world).add_vswitch(&v.id, &v.zone_id, &v.cidr) {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => (StatusCode::CONFLICT, e).into_response(),
    }
}
