//! Talks to nftables: one script, one transaction. In process through
//! `libnftables.so.1` (the library behind `nft`, in Debian's `libnftables1`,
//! which `nftables` depends on) when it loads — a small change then costs
//! about a millisecond instead of a process start — else by running `nft -f -`
//! (`TERWAY_NFT` names a binary and forces that path). In a namespace other
//! than the process's own, both run on a thread switched into it.

use ffi::{library, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {binary}: {source} (install Debian's `nftables` package)")]
    Spawn { binary: String, source: std::io::Error },
    #[error("nft rejected the transaction: {stderr}")]
    Rejected { stderr: String },
    #[error("network namespace {path}: {message}")]
    Netns { path: PathBuf, message: String },
}

/// Where and how nftables is reached.
#[derive(Debug, Clone)]
pub struct Nft {
    backend: Backend,
    netns: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum Backend {
    /// A libnftables context per call, created inside the namespace so that
    /// its netlink socket belongs there. A context kept across calls would
    /// keep its cache of the whole table, and free and refetch it each call.
    Library,
    Binary(String),
}

impl Nft {
    /// nftables in the namespace at `netns` (`None`: this process's).
    pub fn new(netns: Option<&Path>) -> Self {
        let backend = match std::env::var("TERWAY_NFT") {
            Ok(binary) => Backend::Binary(binary),
            Err(_) if library().is_some() => Backend::Library,
            Err(_) => Backend::Binary("nft".into()),
        };
        Self {
            backend,
            netns: netns.map(Path::to_path_buf),
        }
    }

    /// `libnftables` in process, or the `nft` binary.
    pub fn backend_name(&self) -> &str {
        match &self.backend {
            Backend::Library => "libnftables",
            Backend::Binary(b) => b,
        }
    }

    /// Runs `script` as one transaction; returns what it printed (JSON when `json`).
    pub fn run(&self, script: &str, json: bool) -> Result<String, NftError> {
        match &self.backend {
            Backend::Binary(binary) => self.in_netns(|| run_binary(binary, script, json))?,
            Backend::Library => self.in_netns(|| Context::new()?.run(script, json))?,
        }
    }

    fn in_netns<T>(&self, f: impl FnOnce() -> T) -> Result<T, NftError> {
        match &self.netns {
            None => Ok(f()),
            Some(path) => terway_datapath::netns::NetNs::open(path)
                .and_then(|ns| ns.enter(f))
                .map_err(|e| NftError::Netns {
                    path: path.clone(),
                    message: e.to_string(),
                }),
        }
    }

    /// Applies a script atomically.
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(script, false).map(|_| ())
    }

    /// Removes the table, if it is there.
    pub fn remove_table(&self) -> Result<(), NftError> {
        self.apply(&format!("add table {t}\ndelete table {t}\n", t = super::ruleset::TABLE))
    }

    /// The table as `nft list table` prints it; `None` when absent.
    pub fn list_text(&self) -> Result<Option<String>, NftError> {
        absent_is_none(self.run(&format!("list table {}", super::ruleset::TABLE), false))
    }

    /// The table as `nft -j list table` prints it; `None` when absent.
    pub fn list_json(&self) -> Result<Option<serde_json::Value>, NftError> {
        let out = absent_is_none(self.run(&format!("list table {}", super::ruleset::TABLE), true))?;
        Ok(out.and_then(|s| serde_json::from_str(&s).ok()))
    }
}

fn absent_is_none(r: Result<String, NftError>) -> Result<Option<String>, NftError> {
    match r {
        Ok(out) => Ok(Some(out)),
        Err(NftError::Rejected { stderr }) if stderr.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

fn run_binary(binary: &str, script: &str, json: bool) -> Result<String, NftError> {
    let spawn_error = |source| NftError::Spawn {
        binary: binary.to_owned(),
        source,
    };
    let mut cmd = Command::new(binary);
    if json {
        cmd.arg("-j");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        // a write error shows up as nft's own failure below
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Rejected {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The FFI to libnftables, the one place this crate uses `unsafe`.
#[allow(unsafe_code)]
mod ffi {
    use super::NftError;
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::sync::OnceLock;

    /// The few entry points of libnftables' stable API (`nftables/libnftables.h`).
    type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
    type CtxFn = unsafe extern "C" fn(*mut c_void);
    type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
    type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
    type GetFlags = unsafe extern "C" fn(*mut c_void) -> u32;
    type SetFlags = unsafe extern "C" fn(*mut c_void, u32);
    type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

    pub(super) struct Library {
        ctx_new: CtxNew,
        ctx_free: CtxFn,
        buffer_output: CtxInt,
        buffer_error: CtxInt,
        get_output: CtxStr,
        get_error: CtxStr,
        get_flags: GetFlags,
        set_flags: SetFlags,
        run_cmd: RunCmd,
    }

    const NFT_CTX_DEFAULT: u32 = 0;
    const NFT_CTX_OUTPUT_JSON: u32 = 1 << 4;

    /// The library, loaded once; `None` when it is not installed.
    pub(super) fn library() -> Option<&'static Library> {
        static LIB: OnceLock<Option<Library>> = OnceLock::new();
        LIB.get_or_init(|| {
            // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast
            // to the signature libnftables.h declares for it. The handle is never
            // closed, so the pointers stay valid for the life of the process.
            unsafe {
                let handle = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if handle.is_null() {
                    return None;
                }
                macro_rules! sym {
                    ($name:literal as $ty:ty) => {{
                        let p = libc::dlsym(handle, $name.as_ptr());
                        if p.is_null() {
                            return None;
                        }
                        std::mem::transmute::<*mut c_void, $ty>(p)
                    }};
                }
                Some(Library {
                    ctx_new: sym!(c"nft_ctx_new" as CtxNew),
                    ctx_free: sym!(c"nft_ctx_free" as CtxFn),
                    buffer_output: sym!(c"nft_ctx_buffer_output" as CtxInt),
                    buffer_error: sym!(c"nft_ctx_buffer_error" as CtxInt),
                    get_output: sym!(c"nft_ctx_get_output_buffer" as CtxStr),
                    get_error: sym!(c"nft_ctx_get_error_buffer" as CtxStr),
                    get_flags: sym!(c"nft_ctx_output_get_flags" as GetFlags),
                    set_flags: sym!(c"nft_ctx_output_set_flags" as SetFlags),
                    run_cmd: sym!(c"nft_run_cmd_from_buffer" as RunCmd),
                })
            }
        })
        .as_ref()
    }

    /// An `nft_ctx` with its output and errors captured in buffers.
    pub(super) struct Context {
        lib: &'static Library,
        ctx: *mut c_void,
    }

    impl std::fmt::Debug for Context {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("libnftables context")
        }
    }

    impl Context {
        pub(super) fn new() -> Result<Self, NftError> {
            let lib = library().ok_or_else(|| NftError::Rejected {
                stderr: "libnftables.so.1 did not load".into(),
            })?;
            // SAFETY: the documented construction sequence of libnftables.h.
            let ctx = unsafe { (lib.ctx_new)(NFT_CTX_DEFAULT) };
            if ctx.is_null() {
                return Err(NftError::Rejected {
                    stderr: "nft_ctx_new failed".into(),
                });
            }
            let this = Self { lib, ctx };
            // SAFETY: ctx is a live context.
            let buffered = unsafe { (lib.buffer_output)(ctx) == 0 && (lib.buffer_error)(ctx) == 0 };
            if !buffered {
                return Err(NftError::Rejected {
                    stderr: "libnftables cannot buffer its output".into(),
                });
            }
            Ok(this)
        }

        pub(super) fn run(&mut self, script: &str, json: bool) -> Result<String, NftError> {
            let script = CString::new(script).map_err(|_| NftError::Rejected {
                stderr: "the script holds a NUL byte".into(),
            })?;
            // SAFETY: ctx is live and used by this thread alone (it is not Send); the buffers read
            // back are NUL-terminated strings owned by the context, copied before
            // the next call (which resets them).
            unsafe {
                let flags = (self.lib.get_flags)(self.ctx);
                let flags = if json {
                    flags | NFT_CTX_OUTPUT_JSON
                } else {
                    flags & !NFT_CTX_OUTPUT_JSON
                };
                (self.lib.set_flags)(self.ctx, flags);
                let rc = (self.lib.run_cmd)(self.ctx, script.as_ptr());
                let read = |p: *const c_char| {
                    if p.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(p).to_string_lossy().into_owned()
                    }
                };
                let out = read((self.lib.get_output)(self.ctx));
                let err = read((self.lib.get_error)(self.ctx));
                if rc == 0 {
                    Ok(out)
                } else {
                    Err(NftError::Rejected {
                        stderr: err.trim().to_owned(),
                    })
                }
            }
        }
    }

    impl Drop for Context {
        fn drop(&mut self) {
            // SAFETY: ctx is live and dropped once.
            unsafe { (self.lib.ctx_free)(self.ctx) }
        }
    }
}

/// Packets dropped per isolated pod interface, read from the named drop
/// counters of a `list_json` listing.
pub fn dropped_per_interface(listing: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let prefix = super::ruleset::drop_counter("");
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let counter = &item["counter"];
            let ifname = counter["name"].as_str()?.strip_prefix(prefix.as_str())?;
            Some((ifname.to_owned(), counter["packets"].as_u64()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both backends speak the same script language and report errors alike
    /// (no kernel needed: a syntax error fails before netlink).
    #[test]
    fn a_bad_script_is_rejected_with_nfts_message() {
        let nft = Nft::new(None);
        if matches!(nft.backend, Backend::Binary(_)) && which("nft").is_none() {
            eprintln!("SKIP: neither libnftables nor nft is installed");
            return;
        }
        match nft.apply("add tabel inet x\n") {
            Err(NftError::Rejected { stderr }) => assert!(stderr.contains("syntax error"), "{stderr}"),
            other => panic!("{other:?}"),
        }
    }

    fn which(binary: &str) -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(binary))
            .find(|p| p.exists())
    }
}
