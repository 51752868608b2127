//! Where the AccessKey comes from, in the order upstream Terway tries them:
//! the config's keys, ACK's encrypted credential file (`credential_path`),
//! the addon secret directory, the standard environment variables, the
//! instance's RAM role through the metadata service. A source that fails
//! (a damaged file, an expired token) is logged with its reason and the
//! next one is tried.

use crate::error::CloudError;
use crate::metadata::MetadataClient;
use std::path::PathBuf;
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
    /// ACK's encrypted token file, re-read every [`TOKEN_FILE_REREAD`].
    TokenFile(PathBuf),
    AddonSecret(PathBuf),
    /// Each tried in turn (none is a chain itself).
    Chain(Vec<Source>),
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Fixed(_) => "static",
            Source::RamRole { .. } => "ram-role",
            Source::TokenFile(_) => "credential-file",
            Source::AddonSecret(_) => "addon-secret",
            Source::Chain(_) => "chain",
        }
    }
}

/// Hands out valid credentials, refreshing them before they expire.
#[derive(Debug)]
pub struct CredentialProvider {
    source: Source,
    /// The credentials in use, the source they came from, and when to look again.
    cached: Mutex<Option<(Credentials, &'static str, SystemTime)>>,
    refresh_margin: Duration,
}

/// The official SDK treats role credentials as stale 15 minutes before expiry.
const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);
/// Upstream re-reads the credential file this often (the addon rewrites it).
const TOKEN_FILE_REREAD: Duration = Duration::from_secs(30 * 60);

/// Where [`CredentialProvider::chain`] looks, besides the config's keys.
#[derive(Debug, Clone, Default)]
pub struct CredentialFiles {
    /// `credential_path`.
    pub token_file: Option<PathBuf>,
    /// The addon secret directory (upstream: `/var/alibaba-addon-secret`).
    pub addon_secret_dir: Option<PathBuf>,
}

impl CredentialFiles {
    /// `credential_path` as configured, and the addon secret directory where
    /// this node has one.
    pub fn on_this_node(credential_path: Option<PathBuf>) -> Self {
        let addon = PathBuf::from(crate::token_file::ADDON_SECRET_DIR);
        Self {
            token_file: credential_path,
            addon_secret_dir: addon.is_dir().then_some(addon),
        }
    }
}

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

    /// Every source in upstream's order: the addon secret directory (which
    /// upstream reads in place of the config's keys), the config's keys, the
    /// credential file, the environment, the RAM role.
    pub fn chain(
        access_key: Option<&str>,
        access_secret: Option<&Secret>,
        files: &CredentialFiles,
        metadata: Arc<MetadataClient>,
    ) -> Self {
        let mut sources = Vec::new();
        if let Some(dir) = &files.addon_secret_dir {
            sources.push(Source::AddonSecret(dir.clone()));
        }
        if let (Some(id), Some(secret)) = (access_key, access_secret) {
            sources.push(Self::static_keys(id, secret.clone()).source);
        }
        if let Some(path) = &files.token_file {
            sources.push(Source::TokenFile(path.clone()));
        }
        if let Some(env) = Self::from_env() {
            sources.push(env.source);
        }
        sources.push(Source::RamRole { metadata, role: None });
        // keys that are always there end the chain
        if let Some(fixed) = sources.iter().position(|s| matches!(s, Source::Fixed(_))) {
            sources.truncate(fixed + 1);
        }
        let source = if sources.len() == 1 {
            sources.remove(0)
        } else {
            Source::Chain(sources)
        };
        Self {
            source,
            cached: Mutex::new(None),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
        }
    }

    /// Refresh this long before `Expiration`.
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// The kind of source (of the chain: the one in use, once known).
    pub fn kind(&self) -> &'static str {
        match &self.source {
            Source::Chain(_) => self
                .cached
                .try_lock()
                .ok()
                .and_then(|c| c.as_ref().map(|c| c.1))
                .unwrap_or("chain"),
            other => other.kind(),
        }
    }

    /// Valid credentials, fetched or refreshed as needed.
    pub async fn get(&self) -> Result<Credentials, CloudError> {
        if let Source::Fixed(c) = &self.source {
            return Ok(c.clone());
        }
        let mut cached = self.cached.lock().await;
        if let Some((c, _, look_again)) = cached.as_ref() {
            if SystemTime::now() < *look_again {
                return Ok(c.clone());
            }
        }
        let sources = match &self.source {
            Source::Chain(sources) => sources.as_slice(),
            one => std::slice::from_ref(one),
        };
        let mut failures = Vec::new();
        for source in sources {
            match self.fetch(source).await {
                Ok((creds, look_again)) => {
                    tracing::info!(source = source.kind(), access_key_id = %creds.access_key_id, expiration = ?creds.expiration.map(crate::utc::format), "credentials loaded");
                    *cached = Some((creds.clone(), source.kind(), look_again));
                    return Ok(creds);
                }
                Err(e) => {
                    if sources.len() == 1 {
                        return Err(e);
                    }
                    tracing::warn!(source = source.kind(), error = %e, "credential source failed; trying the next");
                    failures.push(format!("{}: {e}", source.kind()));
                }
            }
        }
        Err(CloudError::Credentials(format!(
            "no credential source worked — {}",
            failures.join("; ")
        )))
    }

    /// Credentials from one source, and when to look again.
    async fn fetch(&self, source: &Source) -> Result<(Credentials, SystemTime), CloudError> {
        let now = SystemTime::now();
        let before_expiry = |c: &Credentials| {
            c.expiration
                .map(|exp| exp.checked_sub(self.refresh_margin).unwrap_or(exp))
        };
        match source {
            Source::Fixed(c) => Ok((c.clone(), now + Duration::from_secs(365 * 24 * 3600))),
            Source::RamRole { metadata, role } => {
                let role = match role {
                    Some(r) => r.clone(),
                    None => metadata.ram_role().await?,
                };
                let creds = parse_role_document(&metadata.ram_credentials(&role).await?)?;
                let again = before_expiry(&creds).unwrap_or(now);
                Ok((creds, again))
            }
            Source::TokenFile(path) => {
                let creds = crate::token_file::read_token_file(path)?;
                let again = before_expiry(&creds).map_or(now + TOKEN_FILE_REREAD, |t| t.min(now + TOKEN_FILE_REREAD));
                Ok((creds, again))
            }
            Source::AddonSecret(dir) => {
                let creds = crate::token_file::read_addon_secret(dir)?;
                Ok((creds, now + TOKEN_FILE_REREAD))
            }
            Source::Chain(_) => Err(CloudError::Credentials("a credential chain inside a chain".into())),
        }
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
