//! ACK's encrypted credential file (`credential_path`, typically
//! `/var/addon/token-config`) and the addon secret directory
//! (`/var/alibaba-addon-secret`).
//!
//! The token file is JSON: `access.key.id`, `access.key.secret` and
//! `security.token` are each base64 of a 16-byte IV followed by AES-CBC
//! ciphertext (PKCS#5 padding) under the key made of the bytes of `keyring`;
//! `expiration` is `2006-01-02T15:04:05Z`; an `error` object (`roleName`,
//! `code`, `message`) says the addon could not assume its role.

use crate::credentials::Credentials;
use crate::error::CloudError;
use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use base64::Engine;
use std::path::Path;
use terway_config::Secret;

/// The default directory of the addon secret.
pub const ADDON_SECRET_DIR: &str = "/var/alibaba-addon-secret";

#[derive(serde::Deserialize)]
struct TokenFile {
    #[serde(rename = "access.key.id", default)]
    access_key_id: String,
    #[serde(rename = "access.key.secret", default)]
    access_key_secret: String,
    #[serde(rename = "security.token", default)]
    security_token: String,
    #[serde(default)]
    expiration: String,
    #[serde(default)]
    keyring: String,
    #[serde(default)]
    error: Option<TokenError>,
}

#[derive(serde::Deserialize)]
struct TokenError {
    #[serde(rename = "roleName", default)]
    role_name: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> CloudError {
    CloudError::Credentials(format!("credential file {}: {what}", path.display()))
}

/// Reads and decrypts the token file at `path`.
pub fn read_token_file(path: &Path) -> Result<Credentials, CloudError> {
    let text = std::fs::read(path).map_err(|e| bad(path, format!("cannot be read: {e}")))?;
    parse_token_file(path, &text)
}

fn parse_token_file(path: &Path, text: &[u8]) -> Result<Credentials, CloudError> {
    let file: TokenFile =
        serde_json::from_slice(text).map_err(|e| bad(path, format!("is not the expected JSON: {e}")))?;
    if let Some(e) = file
        .error
        .as_ref()
        .filter(|e| !e.code.is_empty() || !e.message.is_empty())
    {
        return Err(bad(
            path,
            format!(
                "the addon could not assume role {:?}: {}: {}",
                e.role_name, e.code, e.message
            ),
        ));
    }
    let key = file.keyring.as_bytes();
    if ![16, 24, 32].contains(&key.len()) {
        return Err(bad(
            path,
            format!("field keyring is {} bytes; AES needs 16, 24 or 32", key.len()),
        ));
    }
    let field = |name: &str, value: &str| -> Result<String, CloudError> {
        if value.is_empty() {
            return Err(bad(path, format!("field {name} is missing")));
        }
        decrypt(key, value).map_err(|why| bad(path, format!("field {name}: {why}")))
    };
    let access_key_id = field("access.key.id", &file.access_key_id)?;
    let access_key_secret = field("access.key.secret", &file.access_key_secret)?;
    let security_token = field("security.token", &file.security_token)?;
    let expiration = crate::utc::parse(&file.expiration).ok_or_else(|| {
        bad(
            path,
            format!(
                "field expiration {:?} is not a time like 2006-01-02T15:04:05Z",
                file.expiration
            ),
        )
    })?;
    if expiration <= std::time::SystemTime::now() {
        return Err(bad(path, format!("the credentials expired at {}", file.expiration)));
    }
    Ok(Credentials {
        access_key_id,
        access_key_secret: Secret::new(access_key_secret),
        security_token: Some(Secret::new(security_token)),
        expiration: Some(expiration),
    })
}

/// base64(IV ‖ AES-CBC ciphertext) → the UTF-8 plaintext. Errors never
/// include the plaintext or the key.
fn decrypt(key: &[u8], encoded: &str) -> Result<String, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(format!(
            "{} bytes: not a 16-byte IV followed by whole AES blocks",
            raw.len()
        ));
    }
    let (iv, ciphertext) = raw.split_at(16);
    let mut buf = ciphertext.to_vec();
    let plain = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|e| e.to_string())?
            .decrypt_padded_mut::<Pkcs7>(&mut buf),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(|e| e.to_string())?
            .decrypt_padded_mut::<Pkcs7>(&mut buf),
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|e| e.to_string())?
            .decrypt_padded_mut::<Pkcs7>(&mut buf),
        n => return Err(format!("field keyring is {n} bytes; AES needs 16, 24 or 32")),
    }
    .map_err(|_| "bad padding after decryption (wrong keyring, or a damaged value)".to_owned())?;
    String::from_utf8(plain.to_vec()).map_err(|_| "decrypts to bytes that are not text (wrong keyring?)".to_owned())
}

/// The addon secret directory: `access-key-id` and `access-key-secret`
/// files, both present and non-empty (upstream's `GetAddonSecret`).
pub fn read_addon_secret(dir: &Path) -> Result<Credentials, CloudError> {
    let read = |name: &str| -> Result<String, CloudError> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CloudError::Credentials(format!("addon secret {}: {e}", path.display())))?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(CloudError::Credentials(format!(
                "addon secret {} is empty",
                path.display()
            )));
        }
        Ok(text)
    };
    Ok(Credentials {
        access_key_id: read("access-key-id")?,
        access_key_secret: Secret::new(read("access-key-secret")?),
        security_token: None,
        expiration: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYRING: &str = "1234567890abcdef";
    // made with `openssl enc -aes-128-cbc -K <hex of KEYRING> -iv <iv>`, base64(iv ‖ ciphertext)
    const ID: &str = "WD1zfVhUdiweDZM4eAwvS6RFUVF9CplgTdjIkllwyD0=";
    const SECRET: &str = "PwaHJroMd7ygHwU8JLoyBHY0oIpMuQCBLqQJHirA9l/eWBWBrqTeYOdF2qIFEzRC";
    const TOKEN: &str = "K7wHMMsnbJGtj38Fl3d6UQRsKGFnXCbHLolteaNHq8+0akV7Opg3q2bEyG2N8zcL";

    fn file(keyring: &str, secret: &str, expiration: &str) -> String {
        serde_json::json!({
            "access.key.id": ID,
            "access.key.secret": secret,
            "security.token": TOKEN,
            "expiration": expiration,
            "keyring": keyring,
        })
        .to_string()
    }

    #[test]
    fn decrypts_a_file_made_with_openssl() {
        let path = Path::new("/var/addon/token-config");
        let c = parse_token_file(path, file(KEYRING, SECRET, "2099-01-02T15:04:05Z").as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.access_key_id, "STS.NUMa1b2c3d4");
        assert_eq!(c.access_key_secret.expose(), "s3cr3t-Key/with+chars");
        assert_eq!(c.security_token.as_ref().map(Secret::expose), Some("CAISknownToken=="));
        assert_eq!(c.expiration, crate::utc::parse("2099-01-02T15:04:05Z"));
    }

    #[test]
    fn bad_files_name_the_file_and_the_field_and_never_the_secret() {
        let path = Path::new("/var/addon/token-config");
        let err = |text: String| {
            parse_token_file(path, text.as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let wrong_key = err(file("fedcba0987654321", SECRET, "2099-01-02T15:04:05Z"));
        assert!(
            wrong_key.contains("/var/addon/token-config") && wrong_key.contains("access.key.id"),
            "{wrong_key}"
        );
        assert!(err(file("short", SECRET, "2099-01-02T15:04:05Z")).contains("keyring is 5 bytes"));
        let cut = &SECRET[..SECRET.len() - 24];
        assert!(err(file(KEYRING, cut, "2099-01-02T15:04:05Z")).contains("access.key.secret"));
        assert!(err(file(KEYRING, "%%%", "2099-01-02T15:04:05Z")).contains("not base64"));
        assert!(err(file(KEYRING, SECRET, "tomorrow")).contains("field expiration"));
        assert!(err(file(KEYRING, SECRET, "2001-01-02T15:04:05Z")).contains("expired"));
        assert!(err("{not json".into()).contains("not the expected JSON"));
        let failed = serde_json::json!({"error": {"roleName": "AliyunCSManagedNetworkRole", "code": "NoPermission", "message": "denied"}});
        assert!(err(failed.to_string()).contains("AliyunCSManagedNetworkRole"));
        for e in [wrong_key, err(file(KEYRING, cut, "2099-01-02T15:04:05Z"))] {
            assert!(!e.contains("s3cr3t") && !e.contains(KEYRING), "{e}");
        }
    }

    #[test]
    fn addon_secret_needs_both_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("access-key-id"), "LTAIaddon\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(read_addon_secret(dir.path()).is_err());
        std::fs::write(dir.path().join("access-key-secret"), "addon-secret").unwrap_or_else(|e| panic!("{e}"));
        let c = read_addon_secret(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.access_key_id.as_str(), c.access_key_secret.expose()),
            ("LTAIaddon", "addon-secret")
        );
    }
}
