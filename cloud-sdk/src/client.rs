//! The signed OpenAPI client: endpoints, signing, rate limits, retries with
//! backoff, ClientTokens, and per-action statistics.

use crate::api::*;
use crate::credentials::CredentialProvider;
use crate::error::CloudError;
use crate::ratelimit::RateLimiter;
use crate::signature::{self, Params};
use backoff::backoff::Backoff;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};
use terway_config::defaults::BackoffSpec;

pub const ENV_ECS_ENDPOINT: &str = "TERWAY_ECS_ENDPOINT";
pub const ENV_VPC_ENDPOINT: &str = "TERWAY_VPC_ENDPOINT";

/// rustls needs a process-wide crypto provider; ring builds fast and has no C++.
/// Call before building any other reqwest client in the process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub region_id: String,
    /// Base URL of the ECS API, e.g. `https://ecs-vpc.cn-hangzhou.aliyuncs.com`.
    pub ecs_endpoint: String,
    pub vpc_endpoint: String,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
    /// Retry schedule for retryable errors within one call.
    pub retry: BackoffSpec,
    /// Requests per minute by action (the rest use the default bucket).
    pub rate_limits: BTreeMap<String, u32>,
}

/// The in-call retry schedule: like the official SDK's throttling backoff
/// (base 500 ms, exponential, jittered), five attempts in all.
pub const DEFAULT_RETRY: BackoffSpec = BackoffSpec {
    initial_delay: Duration::ZERO,
    duration: Duration::from_millis(500),
    factor: 2.0,
    jitter: 0.5,
    steps: 5,
    cap: Some(Duration::from_secs(10)),
};

impl ClientOptions {
    /// The regional VPC endpoints (`ecs-vpc.<region>.aliyuncs.com`), or the public ones.
    pub fn for_region(region_id: &str, public: bool) -> Self {
        let (ecs, vpc) = if public { ("ecs", "vpc") } else { ("ecs-vpc", "vpc-vpc") };
        Self {
            region_id: region_id.to_owned(),
            ecs_endpoint: format!("https://{ecs}.{region_id}.aliyuncs.com"),
            vpc_endpoint: format!("https://{vpc}.{region_id}.aliyuncs.com"),
            timeout: Duration::from_secs(10),
            retry: DEFAULT_RETRY,
            rate_limits: terway_config::defaults::RATE_LIMITS_PER_MINUTE
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }

    /// From the daemon config: its endpoint overrides and rate limits; the
    /// environment (`TERWAY_ECS_ENDPOINT`, `TERWAY_VPC_ENDPOINT`) wins over both.
    pub fn from_config(config: &terway_config::Config, region_id: &str) -> Self {
        let mut opts = Self::for_region(region_id, config.endpoints.public);
        if let Some(e) = &config.endpoints.ecs {
            opts.ecs_endpoint = normalize_endpoint(e);
        }
        if let Some(e) = &config.endpoints.vpc {
            opts.vpc_endpoint = normalize_endpoint(e);
        }
        if let Some(e) = std::env::var(ENV_ECS_ENDPOINT).ok().filter(|s| !s.is_empty()) {
            opts.ecs_endpoint = normalize_endpoint(&e);
        }
        if let Some(e) = std::env::var(ENV_VPC_ENDPOINT).ok().filter(|s| !s.is_empty()) {
            opts.vpc_endpoint = normalize_endpoint(&e);
        }
        opts.rate_limits = config.rate_limit.clone();
        opts
    }

    /// Both products at one base URL (the emulator serves both).
    pub fn with_endpoint(mut self, url: &str) -> Self {
        self.ecs_endpoint = normalize_endpoint(url);
        self.vpc_endpoint = normalize_endpoint(url);
        self
    }
}

/// A bare host becomes `https://host`; URLs keep their scheme.
pub fn normalize_endpoint(e: &str) -> String {
    let e = e.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_owned()
    } else {
        format!("https://{e}")
    }
}

/// Counters of one action, for metrics and the demo's summary.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ActionStats {
    /// Logical calls (one per `call`, however many attempts).
    pub calls: u64,
    /// HTTP attempts made.
    pub attempts: u64,
    pub successes: u64,
    /// Failed attempts by error code.
    pub errors: BTreeMap<String, u64>,
    pub latency_seconds_sum: f64,
    /// Attempt latencies: counts at or below each bound of [`LATENCY_BUCKETS`].
    pub latency_buckets: Vec<u64>,
    pub rate_limit_wait_seconds: f64,
}

/// Histogram bounds in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    options: ClientOptions,
    credentials: Arc<CredentialProvider>,
    limiter: RateLimiter,
    stats: Mutex<BTreeMap<&'static str, ActionStats>>,
}

/// The Alibaba Cloud ECS/VPC client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CloudClient {
    inner: Arc<Inner>,
}

impl CloudClient {
    pub fn new(options: ClientOptions, credentials: Arc<CredentialProvider>) -> Result<Self, CloudError> {
        install_crypto_provider();
        for e in [&options.ecs_endpoint, &options.vpc_endpoint] {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(CloudError::Config(format!("endpoint {e:?} is not an http(s) URL")));
            }
        }
        if options.region_id.is_empty() {
            return Err(CloudError::Config("region id is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .pool_max_idle_per_host(32)
            .no_proxy()
            .build()
            .map_err(|e| CloudError::Config(format!("HTTP client: {e}")))?;
        let limiter = RateLimiter::new(
            options.rate_limits.clone(),
            terway_config::defaults::DEFAULT_RATE_LIMIT_PER_MINUTE,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                options,
                credentials,
                limiter,
                stats: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    pub fn region_id(&self) -> &str {
        &self.inner.options.region_id
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Per-action counters since the client was made.
    pub fn stats(&self) -> BTreeMap<&'static str, ActionStats> {
        self.inner.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, action: &'static str, f: impl FnOnce(&mut ActionStats)) {
        let mut stats = self.inner.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = stats.entry(action).or_insert_with(|| ActionStats {
            latency_buckets: vec![0; LATENCY_BUCKETS.len()],
            ..Default::default()
        });
        f(entry);
    }

    /// Performs `req`: retries what is retryable with backoff, a fresh nonce and
    /// timestamp per attempt, and — for actions that take one — the same
    /// ClientToken on every attempt, so a lost success is not done twice.
    pub async fn call<A: Action>(&self, req: &A) -> Result<A::Response, CloudError> {
        let token = A::TAKES_CLIENT_TOKEN.then(|| req.client_token().map_or_else(new_client_token, str::to_owned));
        let mut params = Params::new();
        req.params(&mut params);
        if let Some(token) = &token {
            params.insert("ClientToken".into(), token.clone());
        }
        self.record(A::NAME, |s| s.calls += 1);
        let spec = self.inner.options.retry;
        let mut schedule = backoff::ExponentialBackoff {
            current_interval: spec.duration,
            initial_interval: spec.duration,
            randomization_factor: spec.jitter.min(1.0),
            multiplier: spec.factor.max(1.0),
            max_interval: spec.cap.unwrap_or(Duration::from_secs(60)),
            max_elapsed_time: None,
            ..Default::default()
        };
        let mut refreshed_credentials = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = self.attempt::<A>(&params).await;
            match result {
                Ok(resp) => {
                    self.record(A::NAME, |s| s.successes += 1);
                    return Ok(resp);
                }
                Err(e) => {
                    self.record(A::NAME, |s| {
                        *s.errors.entry(e.metric_code().to_owned()).or_default() += 1
                    });
                    let expired_token = matches!(
                        e.code(),
                        Some("InvalidSecurityToken.Expired" | "InvalidSecurityToken.Expire")
                    );
                    if expired_token && !refreshed_credentials {
                        refreshed_credentials = true;
                        self.inner.credentials.invalidate().await;
                        continue;
                    }
                    if !e.is_retryable() || attempt >= spec.steps.max(1) {
                        tracing::debug!(action = A::NAME, attempt, error = %e, "cloud call failed");
                        return Err(e);
                    }
                    let wait = schedule.next_backoff().unwrap_or(spec.duration);
                    tracing::debug!(action = A::NAME, attempt, wait_ms = wait.as_millis() as u64, error = %e, "retrying cloud call");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn attempt<A: Action>(&self, action_params: &Params) -> Result<A::Response, CloudError> {
        let waited = self.inner.limiter.acquire(A::NAME).await;
        let creds = self.inner.credentials.get().await?;
        let mut params = action_params.clone();
        for (k, v) in [
            ("Action", A::NAME),
            ("Version", A::PRODUCT.version()),
            ("Format", "JSON"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
        ] {
            params.insert(k.into(), v.into());
        }
        params.insert("AccessKeyId".into(), creds.access_key_id.clone());
        params.insert("SignatureNonce".into(), new_client_token());
        params.insert("Timestamp".into(), crate::utc::now());
        if let Some(token) = &creds.security_token {
            params.insert("SecurityToken".into(), token.expose().to_owned());
        }
        let method = if A::POST { "POST" } else { "GET" };
        let sig = signature::signature(method, &params, creds.access_key_secret.expose());
        let base = match A::PRODUCT {
            Product::Ecs => &self.inner.options.ecs_endpoint,
            Product::Vpc => &self.inner.options.vpc_endpoint,
        };
        let encoded = format!(
            "{}&Signature={}",
            signature::canonical_query(&params),
            signature::percent_encode(&sig)
        );
        let request = if A::POST {
            self.inner
                .http
                .post(format!("{base}/"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(encoded)
        } else {
            self.inner.http.get(format!("{base}/?{encoded}"))
        };
        let started = Instant::now();
        self.record(A::NAME, |s| {
            s.attempts += 1;
            s.rate_limit_wait_seconds += waited.as_secs_f64();
        });
        let outcome = request.send().await;
        let response = match outcome {
            Ok(r) => r,
            Err(e) => {
                self.observe_latency(A::NAME, started);
                return Err(transport_error(A::NAME, e));
            }
        };
        let status = response.status().as_u16();
        let header_request_id = response
            .headers()
            .get("x-acs-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.text().await.map_err(|e| transport_error(A::NAME, e));
        self.observe_latency(A::NAME, started);
        let body = body?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&body).map_err(|e| CloudError::Decode {
                action: A::NAME.into(),
                status,
                message: e.to_string(),
                request_id: header_request_id,
            });
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(err) if !err.code.is_empty() => Err(CloudError::Api {
                action: A::NAME.into(),
                status,
                code: err.code,
                // SignatureDoesNotMatch echoes the string to sign, which holds the STS token.
                message: redact(&err.message, creds.security_token.as_ref().map(|t| t.expose())),
                request_id: if err.request_id.is_empty() {
                    header_request_id
                } else {
                    err.request_id
                },
            }),
            _ => Err(CloudError::Decode {
                action: A::NAME.into(),
                status,
                message: format!(
                    "error body without a Code: {}",
                    body.chars().take(200).collect::<String>()
                ),
                request_id: header_request_id,
            }),
        }
    }

    fn observe_latency(&self, action: &'static str, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        self.record(action, |s| {
            s.latency_seconds_sum += secs;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    s.latency_buckets[i] += 1;
                }
            }
        });
    }

    /// Every ENI matching `req`, following NextToken across pages.
    pub async fn describe_network_interfaces_all(
        &self,
        mut req: DescribeNetworkInterfaces,
    ) -> Result<Vec<NetworkInterfaceSet>, CloudError> {
        let mut all = Vec::new();
        loop {
            let page = self.call(&req).await?;
            all.extend(page.network_interface_sets.items);
            if page.next_token.is_empty() {
                return Ok(all);
            }
            req.next_token = Some(page.next_token);
        }
    }

    /// Every vSwitch matching `req`, following PageNumber across pages.
    pub async fn describe_vswitches_all(&self, mut req: DescribeVSwitches) -> Result<Vec<VSwitch>, CloudError> {
        let mut all = Vec::new();
        let page_size = req.page_size.unwrap_or(50);
        req.page_size = Some(page_size);
        let mut page_number = 1;
        loop {
            req.page_number = Some(page_number);
            let page = self.call(&req).await?;
            let got = page.vswitches.items.len();
            all.extend(page.vswitches.items);
            if got == 0 || all.len() >= page.total_count as usize {
                return Ok(all);
            }
            page_number += 1;
        }
    }

    /// The quotas of one instance type.
    pub async fn instance_type(&self, instance_type: &str) -> Result<InstanceType, CloudError> {
        let resp = self
            .call(&DescribeInstanceTypes {
                instance_types: vec![instance_type.to_owned()],
                ..Default::default()
            })
            .await?;
        resp.instance_types
            .items
            .into_iter()
            .find(|t| t.instance_type_id == instance_type)
            .ok_or_else(|| CloudError::Decode {
                action: DescribeInstanceTypes::NAME.into(),
                status: 200,
                message: format!("instance type {instance_type:?} is not in the answer"),
                request_id: resp.request_id.clone(),
            })
    }
}

/// A UUID-v4-shaped random string: nonces and ClientTokens.
pub fn new_client_token() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:01x}{:02x}-{:01x}{:01x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        8 | (b[8] & 0x3),
        b[8] >> 4,
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// `text` with `secret` (raw, encoded once or twice) replaced by `<redacted>`.
fn redact(text: &str, secret: Option<&str>) -> String {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return text.to_owned();
    };
    let once = signature::percent_encode(secret);
    let twice = signature::percent_encode(&once);
    text.replace(&twice, "<redacted>")
        .replace(&once, "<redacted>")
        .replace(secret, "<redacted>")
}

/// A transport error without its URL: a GET URL carries the signature and
/// the STS token, which must not reach logs.
fn transport_error(action: &str, e: reqwest::Error) -> CloudError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    CloudError::Transport {
        action: action.into(),
        message,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_endpoints() {
        let o = ClientOptions::for_region("cn-shanghai", false);
        assert_eq!(o.ecs_endpoint, "https://ecs-vpc.cn-shanghai.aliyuncs.com");
        assert_eq!(o.vpc_endpoint, "https://vpc-vpc.cn-shanghai.aliyuncs.com");
        let o = ClientOptions::for_region("cn-shanghai", true);
        assert_eq!(o.ecs_endpoint, "https://ecs.cn-shanghai.aliyuncs.com");
        assert_eq!(o.vpc_endpoint, "https://vpc.cn-shanghai.aliyuncs.com");
        assert_eq!(o.rate_limits["DescribeNetworkInterfaces"], 800);
    }

    #[test]
    fn overrides_from_config_and_environment() {
        assert_eq!(normalize_endpoint("ecs.example.com/"), "https://ecs.example.com");
        assert_eq!(normalize_endpoint("http://127.0.0.1:8090/"), "http://127.0.0.1:8090");
        let cfg = terway_config::Config::parse(
            r#"{"ecs_endpoint": "http://127.0.0.1:1", "vpc_endpoint": "vpc.internal", "rate_limit": {"DescribeVSwitches": 7}}"#,
            None,
        )
        .unwrap()
        .config;
        let o = ClientOptions::from_config(&cfg, "cn-beijing");
        assert_eq!(o.ecs_endpoint, "http://127.0.0.1:1");
        assert_eq!(o.vpc_endpoint, "https://vpc.internal");
        assert_eq!(o.rate_limits["DescribeVSwitches"], 7);
        // the environment wins over the file (the only test touching this variable)
        std::env::set_var(ENV_VPC_ENDPOINT, "http://127.0.0.1:2");
        let o = ClientOptions::from_config(&cfg, "cn-beijing");
        std::env::remove_var(ENV_VPC_ENDPOINT);
        assert_eq!(o.vpc_endpoint, "http://127.0.0.1:2");
        let bad = ClientOptions {
            ecs_endpoint: "ftp://x".into(),
            ..o
        };
        let creds = std::sync::Arc::new(CredentialProvider::static_keys("id", terway_config::Secret::new("s")));
        assert!(matches!(CloudClient::new(bad, creds), Err(CloudError::Config(_))));
    }

    #[test]
    fn redaction_covers_every_encoding() {
        let token = "CAIS+a/b=";
        let text = format!(
            "x {token} {} {}",
            signature::percent_encode(token),
            signature::percent_encode(&signature::percent_encode(token))
        );
        let out = redact(&text, Some(token));
        assert_eq!(out, "x <redacted> <redacted> <redacted>");
    }

    #[test]
    fn client_tokens_look_like_uuids() {
        let t = new_client_token();
        assert_eq!(t.len(), 36);
        assert_eq!(t.matches('-').count(), 4);
        assert_ne!(t, new_client_token());
    }
}
