//! Where the AccessKey comes from: the config, the standard environment
//! variables, or the instance's RAM role through the metadata service.

use crate::error::CloudError;
use crate::metadata::MetadataClient;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use terway_config::Secret;
use tokio::sync::Mutex;

pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

/// One set of credentials. Secrets print as `<redacted>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: Secret,
    /// STS token, sent as the signed `SecurityToken` parameter.
    pub security_token: Option<Secret>,
    /// When the credentials stop working (RAM role credentials only).
    pub expiration: Option<SystemTime>,
}

#[derive(Debug)]
enum Source {
    Fixed(Credentials),
    RamRole {
        metadata: Arc<MetadataClient>,
        role: Option<String>,
    },
}

/// Hands out valid credentials, refreshing RAM-role credentials before they expire.
#[derive(Debug)]
pub struct CredentialProvider {
    source: Source,
    cached: Mutex<Option<Credentials>>,
    refresh_margin: Duration,
}

/// The official SDK treats role credentials as stale 15 minutes before expiry.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);

impl CredentialProvider {
    pub fn fixed(credentials: Credentials) -> Self {
        Self {
            source: Source::Fixed(credentials),
            cached: Mutex::new(None),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
        }
    }

    pub fn static_keys(access_key_id: impl Into<String>, access_key_secret: Secret) -> Self {
        Self::fixed(Credentials {
            access_key_id: access_key_id.into(),
            access_key_secret,
            security_token: None,
            expiration: None,
        })
    }

    /// From `ALIBABA_CLOUD_ACCESS_KEY_ID` / `_SECRET` (and `_SECURITY_TOKEN`), if set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var(ENV_ACCESS_KEY_ID).ok().filter(|s| !s.is_empty())?;
        let secret = std::env::var(ENV_ACCESS_KEY_SECRET).ok().filter(|s| !s.is_empty())?;
        let token = std::env::var(ENV_SECURITY_TOKEN)
            .ok()
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        Some(Self::fixed(Credentials {
            access_key_id: id,
            access_key_secret: Secret::new(secret),
            security_token: token,
            expiration: None,
        }))
    }

    /// The instance's RAM role (`role` None: the one metadata names).
    pub fn ram_role(metadata: Arc<MetadataClient>, role: Option<String>) -> Self {
        Self {
            source: Source::RamRole { metadata, role },
            cached: Mutex::new(None),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
        }
    }

    /// Config keys first, then the environment, then the RAM role.
    pub fn resolve(access_key: Option<&str>, access_secret: Option<&Secret>, metadata: Arc<MetadataClient>) -> Self {
        if let (Some(id), Some(secret)) = (access_key, access_secret) {
            return Self::static_keys(id, secret.clone());
        }
        Self::from_env().unwrap_or_else(|| Self::ram_role(metadata, None))
    }

    /// Refresh this long before `Expiration`.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    pub fn kind(&self) -> &'static str {
        match self.source {
            Source::Fixed(_) => "static",
            Source::RamRole { .. } => "ram-role",
        }
    }

    /// Valid credentials, fetched or refreshed as needed.
    pub async fn get(&self) -> Result<Credentials, CloudError> {
        let (metadata, role) = match &self.source {
            Source::Fixed(c) => return Ok(c.clone()),
            Source::RamRole { metadata, role } => (metadata, role),
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh = c
                .expiration
                .is_none_or(|exp| SystemTime::now() + self.refresh_margin < exp);
            if fresh {
                return Ok(c.clone());
            }
        }
        let role = match role {
            Some(r) => r.clone(),
            None => metadata.ram_role().await?,
        };
        let doc = metadata.ram_credentials(&role).await?;
        let creds = parse_role_document(&doc)?;
        tracing::info!(role = %role, access_key_id = %creds.access_key_id, expiration = ?creds.expiration.map(crate::utc::format), "RAM role credentials refreshed");
        *cached = Some(creds.clone());
        Ok(creds)
    }

    /// Forgets cached role credentials (after the cloud called them expired).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleDocument {
    code: String,
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    access_key_secret: String,
    #[serde(default)]
    security_token: String,
    #[serde(default)]
    expiration: String,
}

fn parse_role_document(doc: &str) -> Result<Credentials, CloudError> {
    let d: RoleDocument = serde_json::from_str(doc)
        .map_err(|e| CloudError::Credentials(format!("RAM role document is not the expected JSON: {e}")))?;
    if d.code != "Success" {
        return Err(CloudError::Credentials(format!(
            "RAM role document has Code {:?}, not \"Success\"",
            d.code
        )));
    }
    if d.access_key_id.is_empty() || d.access_key_secret.is_empty() || d.security_token.is_empty() {
        return Err(CloudError::Credentials(
            "RAM role document lacks AccessKeyId, AccessKeySecret or SecurityToken".into(),
        ));
    }
    let expiration = crate::utc::parse(&d.expiration)
        .ok_or_else(|| CloudError::Credentials(format!("RAM role document has a bad Expiration {:?}", d.expiration)))?;
    Ok(Credentials {
        access_key_id: d.access_key_id,
        access_key_secret: Secret::new(d.access_key_secret),
        security_token: Some(Secret::new(d.security_token)),
        expiration: Some(expiration),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_document() {
        let c = parse_role_document(
            r#"{"Code":"Success","AccessKeyId":"STS.x","AccessKeySecret":"SECRET-VALUE-1","SecurityToken":"TOKEN-VALUE-2","Expiration":"2030-01-01T06:00:00Z","LastUpdated":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "STS.x");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("SECRET-VALUE-1") && !shown.contains("TOKEN-VALUE-2"),
            "{shown}"
        );
        let bad = parse_role_document(r#"{"Code":"Failed"}"#).unwrap_err().to_string();
        assert!(bad.contains("Failed"));
        assert!(parse_role_document(
            r#"{"Code":"Success","AccessKeyId":"a","AccessKeySecret":"b","SecurityToken":"c","Expiration":"soon"}"#
        )
        .is_err());
    }

    #[tokio::test]
    async fn static_keys_never_print_the_secret() {
        let p = CredentialProvider::static_keys("LTAIid", Secret::new("the-secret-value"));
        let c = p.get().await.unwrap();
        assert_eq!(c.access_key_secret.expose(), "the-secret-value");
        assert!(!format!("{p:?} {c:?}").contains("the-secret-value"));
    }
}
