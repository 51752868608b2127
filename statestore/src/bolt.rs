//! Reading a bbolt file: the embedded database upstream Terway keeps its pod
//! records in (`/var/lib/cni/terway/ResRelation.db`), read once when
//! terwayd takes a node over. Read only: the newest valid meta page names
//! the root, and one top-level bucket's B+tree is walked in key order.
//! Native byte order, as bbolt writes it (little-endian on every ECS type).

use std::collections::HashSet;
use std::path::Path;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const BUCKET_LEAF: u32 = 0x01;

/// A bucket's key/value pairs.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a readable bbolt file: {why}")]
    Corrupt { path: String, why: String },
}

/// A bbolt file read into memory.
#[derive(Debug)]
pub struct BoltFile {
    path: String,
    data: Vec<u8>,
    page_size: usize,
    /// The root bucket's page, from the newest valid meta page.
    root: u64,
}

impl BoltFile {
    pub fn open(path: &Path) -> Result<Self, BoltError> {
        let shown = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| BoltError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut file = Self {
            path: shown,
            data,
            page_size: 0,
            root: 0,
        };
        // page 0's meta gives the page size; page 1 is found with it (or, if
        // page 0 is torn, with the sizes bbolt uses)
        let first = file.meta_at(0);
        let sizes: Vec<usize> = match &first {
            Some(m) => vec![m.page_size],
            None => vec![4096, 8192, 16384, 65536],
        };
        let newest = sizes
            .iter()
            .filter_map(|size| file.meta_at(*size))
            .chain(first)
            .max_by_key(|m| m.txid)
            .ok_or_else(|| file.corrupt("no valid meta page"))?;
        file.page_size = newest.page_size;
        file.root = newest.root;
        Ok(file)
    }

    /// The key/value pairs of top-level bucket `name`, in key order (nested
    /// buckets left out); `None` if there is no such bucket.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Pairs>, BoltError> {
        // a sound tree reaches each page once: a corrupt one that points at a
        // page again is refused (its walk could otherwise repeat without end)
        let mut seen = HashSet::from([self.root]);
        let mut top = Vec::new();
        self.walk(self.page(self.root)?, &mut seen, &mut top)?;
        let Some(header) = top.into_iter().find(|e| e.bucket && e.key == name).map(|e| e.value) else {
            return Ok(None);
        };
        let root = self.u64_at(&header, 0)?;
        let mut entries = Vec::new();
        if root == 0 {
            // a small bucket is stored inline: its page follows the header
            let inline = header
                .get(16..)
                .ok_or_else(|| self.corrupt("inline bucket too short"))?;
            self.walk(inline, &mut seen, &mut entries)?;
        } else if seen.insert(root) {
            self.walk(self.page(root)?, &mut seen, &mut entries)?;
        } else {
            return Err(self.corrupt(format!("page {root} is reached twice")));
        }
        Ok(Some(
            entries
                .into_iter()
                .filter(|e| !e.bucket)
                .map(|e| (e.key, e.value))
                .collect(),
        ))
    }

    fn corrupt(&self, why: impl Into<String>) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            why: why.into(),
        }
    }

    fn meta_at(&self, offset: usize) -> Option<Meta> {
        let m = self.data.get(offset + PAGE_HEADER..offset + PAGE_HEADER + 64)?;
        let u32_at = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap_or_default());
        let u64_at = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap_or_default());
        let page_size = u32_at(8) as usize;
        let valid = u32_at(0) == MAGIC
            && u32_at(4) == VERSION
            && u64_at(56) == fnv1a64(&m[..56])
            && page_size >= 512
            && (offset == 0 || offset == page_size);
        valid.then(|| Meta {
            page_size,
            root: u64_at(16),
            txid: u64_at(48),
        })
    }

    /// Page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<&[u8], BoltError> {
        // a corrupt file's numbers may be anything: no arithmetic may overflow
        let beyond = || self.corrupt(format!("page {id} beyond the end of the file"));
        let start = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_mul(self.page_size))
            .ok_or_else(beyond)?;
        let header = self
            .data
            .get(start..start.saturating_add(PAGE_HEADER))
            .filter(|h| h.len() == PAGE_HEADER)
            .ok_or_else(beyond)?;
        let overflow = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
        let end = start.saturating_add(overflow.saturating_add(1).saturating_mul(self.page_size));
        self.data.get(start..end.min(self.data.len())).ok_or_else(beyond)
    }

    fn walk(&self, page: &[u8], seen: &mut HashSet<u64>, out: &mut Vec<Element>) -> Result<(), BoltError> {
        if page.len() < PAGE_HEADER {
            return Err(self.corrupt("a page too short"));
        }
        let flags = u16::from_le_bytes([page[8], page[9]]);
        let count = u16::from_le_bytes([page[10], page[11]]) as usize;
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            if flags & BRANCH_PAGE != 0 {
                let child = self.u64_at(page, at + 8)?;
                if !seen.insert(child) {
                    return Err(self.corrupt(format!("page {child} is reached twice")));
                }
                self.walk(self.page(child)?, seen, out)?;
            } else if flags & LEAF_PAGE != 0 {
                let flags = self.u32_at(page, at)?;
                let pos = self.u32_at(page, at + 4)? as usize;
                let ksize = self.u32_at(page, at + 8)? as usize;
                let vsize = self.u32_at(page, at + 12)? as usize;
                let key_start = at.saturating_add(pos);
                let bytes = page
                    .get(key_start..key_start.saturating_add(ksize).saturating_add(vsize))
                    .ok_or_else(|| self.corrupt("a leaf element runs past its page"))?;
                out.push(Element {
                    key: bytes[..ksize].to_vec(),
                    value: bytes[ksize..].to_vec(),
                    bucket: flags & BUCKET_LEAF != 0,
                });
            } else {
                return Err(self.corrupt(format!("page of kind {flags:#x} inside a tree")));
            }
        }
        Ok(())
    }

    fn u32_at(&self, b: &[u8], i: usize) -> Result<u32, BoltError> {
        b.get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| self.corrupt("truncated element"))
    }

    fn u64_at(&self, b: &[u8], i: usize) -> Result<u64, BoltError> {
        b.get(i..i + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| self.corrupt("truncated element"))
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    page_size: usize,
    root: u64,
    txid: u64,
}

struct Element {
    key: Vec<u8>,
    value: Vec<u8>,
    bucket: bool,
}

/// bbolt's meta checksum: FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
