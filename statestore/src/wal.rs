//! The ledger's write-ahead log. A commit is appended here (its commit
//! point) and applied to sled later, hundreds of commits in one sled
//! transaction; making commits durable is one sync of this file's written
//! range (shared by every writer waiting, see `FlushGate`) instead of a sled
//! flush, whose cost grows with the data it holds. Sled still flushes on its
//! own every 500 ms; a log written to its end is replaced by a spare made
//! ahead, and deleted once sled, flushed, holds all it recorded.
//!
//! A log is created full of zeros, synced with its metadata, and written in
//! place; the zeros after the last record end it. Syncing a record is then a
//! data-only write-out (`sync_file_range`, as sled's own flush does): the
//! same guarantee the ledger had with sled alone — the kernel has handed the
//! data to the disk; a disk with a volatile write cache can still lose it in
//! a power cut, which `fdatasync` per commit would cover at about twice the cost.
//!
//! Each record carries a sequence number; the sled transaction applying a
//! batch stores the last one (`meta/wal_applied`), so recovery applies only
//! what sled lacks: sled may be ahead of the log's synced end (its own
//! flush), never applied twice out of order. A record torn by a crash ends the log; every record before it
//! is whole (length and CRC checked).
//!
//! Record: `len u32 | crc32 u32 | seq u64 | count u32 | count × op`, op:
//! `tree u8 | key_len u32 | key | has_value u8 | [value_len u32 | value]`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// One write: (tree number, key, value or removal).
pub(crate) type Op = (u8, Vec<u8>, Option<Vec<u8>>);

const PREFIX: &str = "wal.";
/// How long (in zeros) a log is made: one made while a commit waits (the
/// first after an open) is short; the spares, made in the background once
/// the current log is half written, are longer, so sled is flushed for a
/// retirement only every ten thousand commits or so. A log is retired once
/// written to its end.
const FIRST_LOG: u64 = 256 << 10;
const SPARE_LOG: u64 = 8 << 20;
/// Bytes before the record's body: its length and CRC.
const HEADER: usize = 8;

#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    current: Mutex<Current>,
    /// The next log, made ahead so a rotation under the ledger's lock does
    /// not wait for a megabyte of zeros to reach the disk.
    spare: Mutex<Option<(u64, File)>>,
    making_spare: AtomicBool,
    /// Generations increase with each log made (not necessarily by one: a
    /// spare made too late is deleted).
    next_generation: AtomicU64,
    /// (generation, bytes) known on disk: for the power-cut test.
    synced: Mutex<(u64, u64)>,
}

#[derive(Debug)]
struct Current {
    file: File,
    generation: u64,
    /// Bytes of records written.
    len: u64,
    /// Bytes the log was made with.
    size: u64,
}

/// What recovery found: the records in order and the logs they came from.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub records: Vec<(u64, Vec<Op>)>,
    pub files: Vec<PathBuf>,
    pub last_generation: u64,
}

pub(crate) fn file_name(generation: u64) -> String {
    format!("{PREFIX}{generation:016}")
}

fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

/// Reads every log under `dir`, oldest first, up to the first torn record.
pub(crate) fn recover(dir: &Path) -> std::io::Result<Recovered> {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| Some((generation_of(e.file_name().to_str()?)?, e.path())))
        .collect();
    logs.sort();
    let mut out = Recovered::default();
    for (generation, path) in logs {
        out.last_generation = generation;
        let mut bytes = Vec::new();
        File::open(&path)?.read_to_end(&mut bytes)?;
        parse(&bytes, &mut out.records);
        out.files.push(path);
    }
    Ok(out)
}

/// Appends the whole records of `bytes`, up to the zeros after the last one
/// or a record torn by a crash (only the newest log can end in one: each is
/// synced before the next is started).
fn parse(bytes: &[u8], records: &mut Vec<(u64, Vec<Op>)>) {
    let mut at = 0;
    while let Some((len, record)) = read_record(&bytes[at..]) {
        records.push(record);
        at += len;
    }
}

/// One record at the start of `b`: (bytes it takes, (seq, ops)).
fn read_record(b: &[u8]) -> Option<(usize, (u64, Vec<Op>))> {
    let len = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    if len == 0 {
        return None; // the zeros after the last record
    }
    let crc = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    let body = b.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Reader(body);
    let seq = r.u64()?;
    let count = r.u32()?;
    let mut ops = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let tree = r.u8()?;
        let key = r.bytes()?;
        let value = match r.u8()? {
            0 => None,
            _ => Some(r.bytes()?),
        };
        ops.push((tree, key, value));
    }
    Some((HEADER + len, (seq, ops)))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        Some(self.take(n)?.to_vec())
    }
}

fn encode(seq: u64, ops: &[Op]) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        64 + ops
            .iter()
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 10)
            .sum::<usize>(),
    );
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (tree, key, value) in ops {
        body.push(*tree);
        body.extend_from_slice(&(key.len() as u32).to_le_bytes());
        body.extend_from_slice(key);
        match value {
            None => body.push(0),
            Some(v) => {
                body.push(1);
                body.extend_from_slice(&(v.len() as u32).to_le_bytes());
                body.extend_from_slice(v);
            }
        }
    }
    let mut record = Vec::with_capacity(HEADER + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

/// Writes the first `len` bytes of a log made `size` long out to the disk
/// and waits for them. A record written past the zeros grew the file: then
/// its new length must reach the disk too, which takes `fdatasync`.
#[allow(unsafe_code)] // sync_file_range has no safe wrapper in std
fn write_out(file: &File, len: u64, size: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    if len <= size {
        use std::os::unix::io::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        // SAFETY: a valid open descriptor; the call only reads its arguments
        if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, len, flags) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
    }
    let _ = (len, size);
    file.sync_data()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_log(dir: &Path, generation: u64, size: u64) -> std::io::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join(file_name(generation)))?;
    let zeros = vec![0; 256 << 10];
    for _ in 0..size.div_ceil(256 << 10) {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    // the new log must still be there after a crash, or its records are lost with it
    sync_dir(dir)?;
    Ok(file)
}

impl Wal {
    /// Starts a new, empty log of `generation` under `dir`.
    pub(crate) fn create(dir: &Path, generation: u64) -> std::io::Result<Self> {
        let file = create_log(dir, generation, FIRST_LOG)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Mutex::new(Current {
                file,
                generation,
                len: 0,
                size: FIRST_LOG,
            }),
            spare: Mutex::new(None),
            making_spare: AtomicBool::new(false),
            next_generation: AtomicU64::new(generation + 1),
            synced: Mutex::new((generation, 0)),
        })
    }

    /// Whether a spare should be made now (the current log is half written,
    /// none is ready or being made); if so, the caller makes it with
    /// [`Wal::prepare_spare`], off the ledger's lock.
    pub(crate) fn wants_spare(&self) -> bool {
        let half_written = {
            let cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            cur.len >= cur.size / 2
        };
        half_written
            && self.spare.lock().unwrap_or_else(PoisonError::into_inner).is_none()
            && !self.making_spare.swap(true, Ordering::SeqCst)
    }

    /// Makes the spare log for the next rotation.
    pub(crate) fn prepare_spare(&self) -> std::io::Result<()> {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        let made = create_log(&self.dir, generation, SPARE_LOG);
        self.making_spare.store(false, Ordering::SeqCst);
        let file = made?;
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner).generation;
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if generation > current && spare.is_none() {
            *spare = Some((generation, file));
            return Ok(());
        }
        // a rotation made its own meanwhile: logs must follow in order
        std::fs::remove_file(self.dir.join(file_name(generation)))
    }

    /// Appends one record (not yet synced). On a failed write its bytes are
    /// zeroed again, so the log still ends at its last whole record.
    pub(crate) fn append(&self, seq: u64, ops: &[Op]) -> std::io::Result<()> {
        let record = encode(seq, ops);
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let before = cur.len;
        if let Err(e) = cur.file.write_all_at(&record, before) {
            let _ = cur.file.write_all_at(&vec![0; record.len()], before);
            return Err(e);
        }
        cur.len += record.len() as u64;
        Ok(())
    }

    /// Makes every record appended so far durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        // sync a second handle outside the lock so appends go on meanwhile
        let (file, generation, len, size) = {
            let cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            (cur.file.try_clone()?, cur.generation, cur.len, cur.size)
        };
        write_out(&file, len, size)?;
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        if (generation, len) > *synced {
            *synced = (generation, len);
        }
        Ok(())
    }

    /// Whether the current log is due to be retired.
    pub(crate) fn full(&self) -> bool {
        let cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        cur.len >= cur.size
    }

    /// Syncs the current log and starts the next; returns the retired log,
    /// to delete once sled holds everything in it.
    pub(crate) fn rotate(&self) -> std::io::Result<PathBuf> {
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        write_out(&cur.file, cur.len, cur.size)?;
        let (next, file) = match self.spare.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some((generation, file)) if generation > cur.generation => (generation, file),
            _ => {
                // none ready: a short one now, the spare for the next rotation comes in the background
                let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
                (generation, create_log(&self.dir, generation, FIRST_LOG)?)
            }
        };
        let size = file.metadata()?.len();
        let retired = self.dir.join(file_name(cur.generation));
        *cur = Current {
            file,
            generation: next,
            len: 0,
            size,
        };
        *self.synced.lock().unwrap_or_else(PoisonError::into_inner) = (next, 0);
        Ok(retired)
    }

    /// The log file and how many of its bytes are known to be on disk.
    pub(crate) fn synced(&self) -> (PathBuf, u64) {
        let (generation, len) = *self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        (self.dir.join(file_name(generation)), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let wal = Wal::create(dir.path(), 3).unwrap_or_else(|e| panic!("{e}"));
        let ops: Vec<Op> = vec![
            (1, b"10.0.0.2".to_vec(), Some(b"{}".to_vec())),
            (2, b"pod".to_vec(), None),
        ];
        wal.append(7, &ops).unwrap_or_else(|e| panic!("{e}"));
        wal.append(8, &ops[..1]).unwrap_or_else(|e| panic!("{e}"));
        wal.sync().unwrap_or_else(|e| panic!("{e}"));
        let (path, len) = wal.synced();
        // a crash in the middle of the second record (below)
        let cut = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = recover(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            got.records,
            vec![(7, ops.clone()), (8, ops[..1].to_vec())],
            "the zeros after the last record end the log"
        );
        cut.set_len(len - 3).unwrap_or_else(|e| panic!("{e}"));
        let got = recover(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.records, vec![(7, ops)]);
        assert_eq!(got.last_generation, 3);
        assert_eq!(got.files, vec![path]);
    }

    #[test]
    fn a_flipped_bit_is_not_read_as_a_record() {
        let ops: Vec<Op> = vec![(0, b"eni-1".to_vec(), Some(b"x".to_vec()))];
        let mut record = encode(1, &ops);
        let last = record.len() - 1;
        record[last] ^= 1;
        assert!(read_record(&record).is_none());
    }
}
