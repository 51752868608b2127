//! Live reload. A ConfigMap update swaps the `..data` symlink of the mount
//! instead of rewriting the file, so the watcher re-reads the resolved file
//! on a short period and compares contents; that sees symlink swaps, in-place
//! writes and editors' rename-over alike, with no inotify corner cases.

use crate::model::RESTART_ONLY_FIELDS;
use crate::{parse_json, read_json, resolve_config_file, Config, ConfigError, Diagnostic};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// A file, or a ConfigMap mount directory holding `eni_conf`.
    pub path: PathBuf,
    /// An optional per-node merge patch file.
    pub override_path: Option<PathBuf>,
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadEvent {
    /// A new configuration is in force; these live settings changed.
    Applied { changed: Vec<&'static str> },
    /// The new file was refused; the last good configuration stays in force.
    Rejected { message: String, errors: Vec<Diagnostic> },
    /// These settings changed in the file but apply only after a restart;
    /// their running values are kept meanwhile.
    RestartRequired { fields: Vec<&'static str> },
}

/// What the inputs looked like at the last evaluation, to skip unchanged polls.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    base: Result<String, String>,
    /// The base as the Kubernetes API shows it, preferred to the file.
    api_base: Option<(String, String)>,
    file_override: Option<Result<String, String>>,
    node_override: Option<Value>,
}

#[derive(Debug)]
pub struct ConfigWatcher {
    source: ConfigSource,
    /// The configuration terwayd started with: restart-only settings stay at these values.
    started_with: Arc<Config>,
    current: watch::Sender<Arc<Config>>,
    events: broadcast::Sender<ReloadEvent>,
    state: Mutex<WatchState>,
}

#[derive(Debug)]
struct WatchState {
    last: Fingerprint,
    node_override: Option<Value>,
    api_base: Option<(String, String)>,
}

impl ConfigWatcher {
    /// Loads the configuration once; it must be valid for terwayd to start.
    pub fn start(source: ConfigSource) -> Result<(Self, Vec<Diagnostic>), ConfigError> {
        let fingerprint = read_fingerprint(&source, None, None);
        let base = read_json(&source.path)?;
        let patch = source.override_path.as_deref().map(read_json).transpose()?;
        let loaded = Config::from_parts(base, patch.as_ref(), &source.path.display().to_string())?;
        let config = Arc::new(loaded.config);
        let (current, _) = watch::channel(config.clone());
        let (events, _) = broadcast::channel(64);
        let watcher = Self {
            source,
            started_with: config,
            current,
            events,
            state: Mutex::new(WatchState {
                last: fingerprint,
                node_override: None,
                api_base: None,
            }),
        };
        Ok((watcher, loaded.warnings))
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Config> {
        self.current.borrow().clone()
    }

    /// Receives every configuration put in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.current.subscribe()
    }

    /// Receives what each reload did.
    pub fn events(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    /// Sets (or clears) the node-level override that comes from the
    /// Kubernetes API rather than a file, and re-evaluates.
    pub fn set_node_override(&self, patch: Option<Value>) -> Vec<ReloadEvent> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.node_override = patch;
        self.evaluate(&mut state, true)
    }

    /// Sets (or clears, falling back to the file) the base configuration as
    /// the Kubernetes API shows it — the `eni-config` ConfigMap, seen sooner
    /// than kubelet refreshes its mount. `origin` names it in errors.
    pub fn set_api_base(&self, base: Option<(String, String)>) -> Vec<ReloadEvent> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.api_base = base;
        self.evaluate(&mut state, true)
    }

    /// Re-reads the files; evaluates only when something changed.
    pub fn check_now(&self) -> Vec<ReloadEvent> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.evaluate(&mut state, false)
    }

    /// Polls the files every `period` until the returned task is aborted.
    pub fn spawn_polling(self: &Arc<Self>, period: Duration) -> tokio::task::JoinHandle<()> {
        let watcher = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                watcher.check_now();
            }
        })
    }

    fn evaluate(&self, state: &mut WatchState, force: bool) -> Vec<ReloadEvent> {
        let fingerprint = read_fingerprint(&self.source, state.node_override.clone(), state.api_base.clone());
        if !force && fingerprint == state.last {
            return Vec::new();
        }
        state.last = fingerprint.clone();
        let events = match self.build(&fingerprint) {
            Err(err) => {
                let errors = match &err {
                    ConfigError::Invalid { errors, .. } => errors.clone(),
                    _ => Vec::new(),
                };
                tracing::warn!(error = %err, "configuration change rejected; the last good configuration stays in force");
                vec![ReloadEvent::Rejected {
                    message: err.to_string(),
                    errors,
                }]
            }
            Ok(mut next) => {
                let mut events = Vec::new();
                let restart: Vec<&'static str> = self
                    .started_with
                    .changed_fields(&next)
                    .into_iter()
                    .filter(|f| RESTART_ONLY_FIELDS.contains(f))
                    .collect();
                if !restart.is_empty() {
                    tracing::warn!(fields = ?restart, "configuration changes that need a terwayd restart; running values kept");
                    next.keep_restart_only_from(&self.started_with);
                    events.push(ReloadEvent::RestartRequired { fields: restart });
                }
                let changed = self.current().changed_fields(&next);
                if !changed.is_empty() {
                    tracing::info!(fields = ?changed, "configuration change applied");
                    self.current.send_replace(Arc::new(next));
                    events.push(ReloadEvent::Applied { changed });
                }
                events
            }
        };
        for event in &events {
            // No receiver is fine: events are informational.
            let _ = self.events.send(event.clone());
        }
        events
    }

    fn build(&self, fp: &Fingerprint) -> Result<Config, ConfigError> {
        let base_file = resolve_config_file(&self.source.path);
        let (origin, text) = match &fp.api_base {
            Some((origin, text)) => (origin.clone(), text),
            None => (
                base_file.display().to_string(),
                fp.base.as_ref().map_err(|e| read_error(&base_file, e))?,
            ),
        };
        let mut value = parse_json(text, &origin)?;
        if let (Some(path), Some(text)) = (&self.source.override_path, &fp.file_override) {
            let file = resolve_config_file(path);
            let text = text.as_ref().map_err(|e| read_error(&file, e))?;
            let patch = parse_json(text, &file.display().to_string())?;
            if !patch.is_object() {
                return Err(ConfigError::NotAnObject {
                    origin: file.display().to_string(),
                    found: "something else",
                });
            }
            crate::merge_patch(&mut value, &patch);
        }
        Config::from_parts(value, fp.node_override.as_ref(), &origin).map(|loaded| loaded.config)
    }
}

fn read_error(path: &std::path::Path, message: &str) -> ConfigError {
    ConfigError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::other(message.to_owned()),
    }
}

fn read_fingerprint(
    source: &ConfigSource,
    node_override: Option<Value>,
    api_base: Option<(String, String)>,
) -> Fingerprint {
    let read = |p: &std::path::Path| std::fs::read_to_string(resolve_config_file(p)).map_err(|e| e.to_string());
    Fingerprint {
        base: read(&source.path),
        api_base,
        file_override: source.override_path.as_deref().map(read),
        node_override,
    }
}
