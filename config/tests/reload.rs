//! Hot reload on a real directory laid out like a kubelet ConfigMap mount:
//! `eni_conf -> ..data/eni_conf`, `..data -> ..<timestamp>`, updated by
//! swapping the `..data` symlink atomically.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use terway_config::*;

const BASE: &str = r#"{"max_pool_size": 25, "min_pool_size": 10,
  "vswitches": {"cn-shanghai-f": ["vsw-AAA"]}, "ledger_path": "/var/lib/terway/ledger"}"#;

struct ConfigMapMount {
    dir: tempfile::TempDir,
    generation: u32,
}

impl ConfigMapMount {
    fn new(content: &str) -> Self {
        let mut mount = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        mount.update(content);
        symlink("..data/eni_conf", mount.dir.path().join("eni_conf")).unwrap();
        mount
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// What kubelet's atomic writer does: new timestamped dir, swap `..data`, drop the old dir.
    fn update(&mut self, content: &str) {
        self.generation += 1;
        let root = self.dir.path();
        let data_dir = format!("..2026_11_26_{:02}", self.generation);
        std::fs::create_dir(root.join(&data_dir)).unwrap();
        std::fs::write(root.join(&data_dir).join("eni_conf"), content).unwrap();
        let tmp_link = root.join("..data_tmp");
        symlink(&data_dir, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, root.join("..data")).unwrap();
        if self.generation > 1 {
            let old = root.join(format!("..2026_11_26_{:02}", self.generation - 1));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

fn start(path: &Path) -> ConfigWatcher {
    let (watcher, warnings) = ConfigWatcher::start(ConfigSource {
        path: path.to_path_buf(),
        override_path: None,
    })
    .unwrap();
    assert!(warnings.is_empty());
    watcher
}

#[test]
fn valid_change_is_published() {
    let mut mount = ConfigMapMount::new(BASE);
    let watcher = start(&mount.path());
    let mut rx = watcher.subscribe();
    assert_eq!(watcher.current().max_pool_size, 25);
    assert!(watcher.check_now().is_empty(), "nothing changed yet");

    mount.update(
        &BASE
            .replace("\"max_pool_size\": 25", "\"max_pool_size\": 40")
            .replace("vsw-AAA\"", "vsw-AAA\", \"vsw-BBB\""),
    );
    let events = watcher.check_now();
    assert_eq!(events.len(), 1, "{events:?}");
    let ReloadEvent::Applied { changed } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(changed, &["vswitches", "max_pool_size"]);
    assert!(rx.has_changed().unwrap());
    let c = rx.borrow_and_update().clone();
    assert_eq!(c.max_pool_size, 40);
    assert_eq!(c.vswitches_in_zone("cn-shanghai-f"), ["vsw-AAA", "vsw-BBB"]);
    assert!(watcher.check_now().is_empty(), "a second poll sees no change");
}

#[test]
fn invalid_change_is_rejected_and_last_good_kept() {
    let mut mount = ConfigMapMount::new(BASE);
    let watcher = start(&mount.path());
    let mut rx = watcher.subscribe();
    let mut events_rx = watcher.events();

    mount.update(&BASE.replace("\"min_pool_size\": 10", "\"min_pool_size\": -1"));
    let events = watcher.check_now();
    let [ReloadEvent::Rejected { errors, message }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(errors[0].path, "min_pool_size");
    assert!(message.contains("min_pool_size"), "{message}");
    assert!(!rx.has_changed().unwrap(), "nothing published");
    assert_eq!(watcher.current().min_pool_size, 10);
    assert!(matches!(events_rx.try_recv(), Ok(ReloadEvent::Rejected { .. })));

    mount.update("{ not json");
    assert!(matches!(watcher.check_now().as_slice(), [ReloadEvent::Rejected { .. }]));
    assert_eq!(watcher.current().min_pool_size, 10);

    // fixing the file applies again
    mount.update(&BASE.replace("\"min_pool_size\": 10", "\"min_pool_size\": 12"));
    assert!(matches!(watcher.check_now().as_slice(), [ReloadEvent::Applied { .. }]));
    assert_eq!(rx.borrow_and_update().min_pool_size, 12);
}

#[test]
fn restart_only_change_is_reported_and_not_applied() {
    let mut mount = ConfigMapMount::new(BASE);
    let watcher = start(&mount.path());
    mount.update(
        &BASE
            .replace("/var/lib/terway/ledger", "/srv/ledger")
            .replace("\"max_pool_size\": 25", "\"max_pool_size\": 30"),
    );
    let events = watcher.check_now();
    assert_eq!(
        events,
        vec![
            ReloadEvent::RestartRequired {
                fields: vec!["ledger_path"]
            },
            ReloadEvent::Applied {
                changed: vec!["max_pool_size"]
            },
        ]
    );
    let c = watcher.current();
    assert_eq!(c.ledger_path, Path::new("/var/lib/terway/ledger"), "running value kept");
    assert_eq!(c.max_pool_size, 30, "live setting applied");

    // Only a restart-only change: reported, nothing applied.
    mount.update(
        &BASE
            .replace("/var/lib/terway/ledger", "/srv/other")
            .replace("\"max_pool_size\": 25", "\"max_pool_size\": 30"),
    );
    assert_eq!(
        watcher.check_now(),
        vec![ReloadEvent::RestartRequired {
            fields: vec!["ledger_path"]
        }]
    );
}

#[test]
fn node_override_applies_live() {
    let mount = ConfigMapMount::new(BASE);
    let watcher = start(&mount.path());
    let patch = serde_json::json!({"vswitches": {"cn-shanghai-f": null, "cn-shanghai-g": ["vsw-GGG"]}});
    let events = watcher.set_node_override(Some(patch));
    assert!(matches!(events.as_slice(), [ReloadEvent::Applied { .. }]), "{events:?}");
    assert_eq!(
        watcher.current().vswitches.keys().collect::<Vec<_>>(),
        ["cn-shanghai-g"]
    );
    watcher.set_node_override(None);
    assert_eq!(
        watcher.current().vswitches.keys().collect::<Vec<_>>(),
        ["cn-shanghai-f"]
    );
}

#[test]
fn override_file_is_watched_too() {
    let mount = ConfigMapMount::new(BASE);
    let override_file = mount.path().join("node-override.json");
    std::fs::write(&override_file, r#"{"max_pool_size": 11}"#).unwrap();
    let (watcher, _) = ConfigWatcher::start(ConfigSource {
        path: mount.path(),
        override_path: Some(override_file.clone()),
    })
    .unwrap();
    assert_eq!(watcher.current().max_pool_size, 11);
    std::fs::write(&override_file, r#"{"max_pool_size": 12}"#).unwrap();
    watcher.check_now();
    assert_eq!(watcher.current().max_pool_size, 12);
}

#[tokio::test]
async fn polling_publishes_to_subscribers() {
    let mut mount = ConfigMapMount::new(BASE);
    let watcher = Arc::new(start(&mount.path()));
    let mut rx = watcher.subscribe();
    let task = watcher.spawn_polling(Duration::from_millis(20));
    mount.update(&BASE.replace("\"max_pool_size\": 25", "\"max_pool_size\": 26"));
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rx.borrow().max_pool_size, 26);
    task.abort();
}
