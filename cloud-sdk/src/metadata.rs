//! ECS instance metadata service (`http://100.100.100.200`), IMDSv2 tokens included.

use crate::error::CloudError;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
const TOKEN_TTL_SECS: u64 = 21_600;

/// The node's identity, read once at start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub region_id: String,
    pub zone_id: String,
    pub instance_type: String,
    pub primary_mac: String,
    pub vswitch_id: String,
    pub vpc_id: String,
}

/// What metadata says about one attached ENI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EniMetadata {
    pub mac: String,
    pub eni_id: String,
    pub primary_ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub vswitch_id: String,
    pub vswitch_cidr: String,
    pub private_ipv4s: Vec<Ipv4Addr>,
}

#[derive(Debug)]
pub struct MetadataClient {
    base: String,
    http: reqwest::Client,
    attempts: u32,
    token: Mutex<Option<(String, Instant)>>,
}

impl MetadataClient {
    /// `base` is e.g. `http://100.100.100.200` (no trailing slash needed).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, CloudError> {
        crate::client::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| CloudError::Config(format!("metadata HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            attempts: 3,
            token: Mutex::new(None),
        })
    }

    /// How many times a path is tried on transport errors and 5xx (default 3).
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// An IMDSv2 token, cached until shortly before it expires. `None` when the
    /// service does not hand out tokens (then IMDSv1 requests are made).
    async fn token(&self) -> Option<String> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Some(token.clone());
            }
        }
        let resp = self
            .http
            .put(format!("{}{TOKEN_PATH}", self.base))
            .header(TOKEN_TTL_HEADER, TOKEN_TTL_SECS.to_string())
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            tracing::debug!(status = %resp.status(), "metadata token refused; using IMDSv1");
            return None;
        }
        let token = resp.text().await.ok()?.trim().to_owned();
        // a broken answer must not be cached: it would poison every request after it
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            tracing::warn!(
                "the metadata service answered the token request with something that is no token; using IMDSv1"
            );
            return None;
        }
        // renew a minute early so a request never carries an expiring token
        *cached = Some((token.clone(), Instant::now() + Duration::from_secs(TOKEN_TTL_SECS - 60)));
        Some(token)
    }

    async fn drop_token(&self) {
        *self.token.lock().await = None;
    }

    /// GET `/latest/meta-data/<path>`, with the token, bounded retries, and one
    /// fresh token after a 401.
    pub async fn get(&self, path: &str) -> Result<String, CloudError> {
        let url = format!("{}/latest/meta-data/{}", self.base, path.trim_start_matches('/'));
        let err = |status: Option<u16>, message: String| CloudError::Metadata {
            path: path.to_owned(),
            status,
            message,
        };
        let mut last = err(None, "not attempted".into());
        let mut refreshed_token = false;
        let mut attempt = 0;
        while attempt < self.attempts {
            attempt += 1;
            let mut req = self.http.get(&url);
            if let Some(token) = self.token().await {
                req = req.header(TOKEN_HEADER, token);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    match status {
                        200..=299 => return Ok(body.trim().to_owned()),
                        401 if !refreshed_token => {
                            // the token expired or the service restarted: get a new one, once
                            self.drop_token().await;
                            refreshed_token = true;
                            attempt -= 1;
                            last = err(Some(401), "token rejected".into());
                            continue;
                        }
                        500.. => last = err(Some(status), body),
                        _ => return Err(err(Some(status), body)),
                    }
                }
                Err(e) => last = err(None, e.to_string()),
            }
            if attempt < self.attempts {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
        }
        Err(last)
    }

    async fn get_parsed<T: std::str::FromStr>(&self, path: &str) -> Result<T, CloudError> {
        let text = self.get(path).await?;
        text.parse().map_err(|_| CloudError::Metadata {
            path: path.to_owned(),
            status: Some(200),
            message: format!("unexpected value {text:?}"),
        })
    }

    /// This instance's id; an answer that is no instance id (`i-` and
    /// letters and digits) is an error, not another instance.
    pub async fn instance_id(&self) -> Result<String, CloudError> {
        let id = self.get("instance-id").await?;
        let plausible = id.len() <= 64
            && id
                .strip_prefix("i-")
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !plausible {
            return Err(CloudError::Metadata {
                path: "instance-id".into(),
                status: Some(200),
                message: format!("unexpected value {:?}", id.chars().take(64).collect::<String>()),
            });
        }
        Ok(id)
    }

    pub async fn identity(&self) -> Result<InstanceIdentity, CloudError> {
        Ok(InstanceIdentity {
            instance_id: self.instance_id().await?,
            region_id: self.get("region-id").await?,
            zone_id: self.get("zone-id").await?,
            instance_type: self.get("instance/instance-type").await?,
            primary_mac: self.get("mac").await?,
            vswitch_id: self.get("vswitch-id").await?,
            vpc_id: self.get("vpc-id").await?,
        })
    }

    /// MACs of the attached ENIs.
    pub async fn macs(&self) -> Result<Vec<String>, CloudError> {
        let text = self.get("network/interfaces/macs/").await?;
        Ok(text
            .lines()
            .map(|l| l.trim().trim_end_matches('/').to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Every IPv4 address of the ENI with `mac`, its primary included.
    pub async fn eni_addresses(&self, mac: &str) -> Result<Vec<Ipv4Addr>, CloudError> {
        let path = format!("network/interfaces/macs/{mac}/private-ipv4s");
        address_list(&path, &self.get(&path).await?)
    }

    pub async fn eni(&self, mac: &str) -> Result<EniMetadata, CloudError> {
        let p = |leaf: &str| format!("network/interfaces/macs/{mac}/{leaf}");
        let private_ipv4s = self.eni_addresses(mac).await?;
        Ok(EniMetadata {
            mac: mac.to_owned(),
            eni_id: self.get(&p("network-interface-id")).await?,
            primary_ip: self.get_parsed(&p("primary-ip-address")).await?,
            gateway: self.get_parsed(&p("gateway")).await?,
            vswitch_id: self.get(&p("vswitch-id")).await?,
            vswitch_cidr: self.get(&p("vswitch-cidr-block")).await?,
            private_ipv4s,
        })
    }

    /// The IPv6 gateway and CIDR of the vSwitch of the ENI with `mac`;
    /// `None` when the vSwitch has no IPv6 (the service answers 404).
    pub async fn eni_ipv6(&self, mac: &str) -> Result<Option<(std::net::Ipv6Addr, String)>, CloudError> {
        let p = |leaf: &str| format!("network/interfaces/macs/{mac}/{leaf}");
        let gateway = match self.get_parsed(&p("ipv6-gateway")).await {
            Ok(g) => g,
            Err(CloudError::Metadata { status: Some(404), .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((gateway, self.get(&p("vswitch-ipv6-cidr-block")).await?)))
    }

    /// Every IPv6 address of the ENI with `mac` (none on a vSwitch without IPv6).
    pub async fn eni_ipv6_addresses(&self, mac: &str) -> Result<Vec<std::net::Ipv6Addr>, CloudError> {
        let path = format!("network/interfaces/macs/{mac}/ipv6s");
        match self.get(&path).await {
            Ok(text) => address_list(&path, &text),
            Err(CloudError::Metadata { status: Some(404), .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The RAM role attached to the instance.
    pub async fn ram_role(&self) -> Result<String, CloudError> {
        let text = self.get("ram/security-credentials/").await?;
        text.lines()
            .next()
            .map(|l| l.trim().trim_end_matches('/').to_owned())
            .filter(|l| !l.is_empty())
            .ok_or_else(|| CloudError::Credentials("the instance has no RAM role".into()))
    }

    /// The raw credential document of `role`.
    pub async fn ram_credentials(&self, role: &str) -> Result<String, CloudError> {
        self.get(&format!("ram/security-credentials/{role}")).await
    }
}
/// A JSON array of addresses, as `private-ipv4s` and `ipv6s` answer.
fn address_list<T: std::str::FromStr>(path: &str, text: &str) -> Result<Vec<T>, CloudError> {
    let ips = serde_json::from_str::<Vec<String>>(text).map_err(|e| CloudError::Metadata {
        path: path.to_owned(),
        status: Some(200),
        message: e.to_string(),
    })?;
    Ok(ips.iter().filter_map(|s| s.parse().ok()).collect())
}
