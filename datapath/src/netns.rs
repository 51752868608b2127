//! Network namespaces. Netlink sockets and sysctl files are bound to the
//! namespace of the thread that opens them, so work in another namespace is
//! done by switching this thread in, opening, and switching straight back.

use crate::DatapathError;
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, DatapathError> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// A namespace by path: `/var/run/netns/<name>`, `/proc/<pid>/ns/net`, …
    pub fn open(path: &Path) -> Result<Self, DatapathError> {
        let file = File::open(path).map_err(|source| DatapathError::Netns {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Whether `path` is a namespace at all (a file of the kernel's nsfs, as
    /// `/var/run/netns/<name>` and `/proc/<pid>/ns/net` are), not a regular
    /// file or a directory: checked before anything is set up for it.
    pub fn check(path: &Path) -> Result<(), String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC {
            Ok(())
        } else {
            Err(format!(
                "{} is not a network namespace (not a file of the kernel's nsfs)",
                path.display()
            ))
        }
    }

    /// Like [`open`](Self::open), but a namespace that is gone is `None`.
    pub fn open_if_exists(path: &Path) -> Result<Option<Self>, DatapathError> {
        match Self::open(path) {
            Ok(ns) => Ok(Some(ns)),
            Err(DatapathError::Netns { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` with this thread inside the namespace, and always switches back.
    /// `f` must not block on async work: it runs on the caller's thread.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T, DatapathError> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|source| DatapathError::Netns {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| DatapathError::Netns {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let out = f();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Staying in the wrong namespace would misdirect every later call on this thread.
            tracing::error!(error = %e, "cannot return to the original network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }

    /// Writes a sysctl (`net/ipv4/conf/all/forwarding`) inside this namespace.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<(), DatapathError> {
        let path = proc_sys().join(key);
        self.enter(|| std::fs::write(&path, value))?
            .map_err(|source| DatapathError::Sysctl {
                key: key.to_owned(),
                source,
            })
    }

    pub fn read_sysctl(&self, key: &str) -> Result<String, DatapathError> {
        let path = proc_sys().join(key);
        self.enter(|| std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_owned())
            .map_err(|source| DatapathError::Sysctl {
                key: key.to_owned(),
                source,
            })
    }
}

/// Where sysctls are written: `/proc/sys`, or `TERWAY_PROC_SYS` — in an
/// unprivileged container `/proc/sys` is read-only, so the DaemonSet mounts
/// the host's at another path. Network sysctls resolve in the namespace of
/// the thread that opens them, whichever mount they are opened through.
fn proc_sys() -> &'static Path {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        std::env::var_os("TERWAY_PROC_SYS")
            .filter(|v| !v.is_empty())
            .map_or_else(|| "/proc/sys".into(), Into::into)
    })
}
