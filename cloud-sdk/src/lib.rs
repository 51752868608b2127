//! terway-cloud: the signed Alibaba Cloud ECS/VPC OpenAPI client, the
//! instance metadata client, credentials, and (feature `emulator`) an API
//! emulator strict enough to reject what the real cloud rejects.
//!
//! [`CloudClient`] is the entry type: `client.call(&AssignPrivateIpAddresses { .. })`.

pub mod api;
mod client;
pub mod credentials;
mod error;
pub mod metadata;
pub mod ratelimit;
pub mod safety;
pub mod signature;
pub mod token_file;
pub mod utc;

#[cfg(feature = "emulator")]
pub mod emulator;

pub use client::{
    install_crypto_provider, new_client_token, normalize_endpoint, ActionStats, ClientOptions, CloudClient,
    DEFAULT_RETRY, ENV_ECS_ENDPOINT, ENV_VPC_ENDPOINT, LATENCY_BUCKETS,
};
pub use credentials::{CredentialProvider, Credentials};
pub use error::{classify, CloudError, ErrorClass};
pub use metadata::{EniMetadata, InstanceIdentity, MetadataClient};
