//! The offline archive written by `tezipfs compress` (format versions 1 and 2, see
//! `docs/FORMAT.md`): a sequence of windows, each a list of file names and one blob, and (version
//! 2) the learned models those blobs need, each before the first blob that names it, so that an
//! archive decodes anywhere on its own.
//!
//! ```text
//! magic "TZIPARCH" | u16 version | u16 reserved
//! version 1: record*
//! version 2: (u8 0 | record  or  u8 1 | model)*
//! record: u32 n_names | (u16 len, name bytes)* | u64 blob_len | u32 crc32c(record header) | blob
//! model:  u64 len | u32 crc32c(len) | model file (its own checksums; named by its SHA-256)
//! ```

use crate::codec::container::BlobError;
use std::collections::HashMap;
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"TZIPARCH";
/// Newest version read and written (2 only when the archive embeds a model).
pub const VERSION: u16 = 2;
/// Largest model file an archive may embed (a header claiming more is refused before reading).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a tezipfs archive (bad magic)")]
    BadMagic,
    #[error("archive format version {0} is not supported (supports 1 and {VERSION})")]
    Version(u16),
    #[error("archive record {0}: unknown record kind {1}")]
    Kind(usize, u8),
    #[error("archive model record {0} is corrupt ({1})")]
    Model(usize, String),
    #[error("archive record {0} is truncated")]
    Truncated(usize),
    #[error("archive record {0} header is corrupt (CRC mismatch)")]
    RecordCrc(usize),
    #[error("archive record {record}: {source}")]
    Blob { record: usize, source: BlobError },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One window of an archive.
pub struct Record {
    pub names: Vec<Vec<u8>>,
    pub blob: Vec<u8>,
}

/// Writes an archive: version 1 when it embeds no model (readable by builds that know only
/// version 1), version 2 when it may.
pub struct Writer<W: Write> {
    w: W,
    version: u16,
    /// Models embedded so far, by hash.
    embedded: std::collections::HashSet<[u8; 32]>,
}

impl<W: Write> Writer<W> {
    /// Start an archive; `with_models` says whether it may embed models (version 2).
    pub fn new(mut w: W, with_models: bool) -> io::Result<Writer<W>> {
        let version: u16 = if with_models { 2 } else { 1 };
        w.write_all(MAGIC)?;
        w.write_all(&version.to_le_bytes())?;
        w.write_all(&0u16.to_le_bytes())?;
        Ok(Writer { w, version, embedded: Default::default() })
    }

    /// Embed a model file (`hash` its SHA-256) unless it already is: before the first window
    /// that needs it.
    pub fn model(&mut self, hash: [u8; 32], file: &[u8]) -> io::Result<()> {
        if self.version < 2 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "this archive was started without models"));
        }
        if self.embedded.insert(hash) {
            let len = (file.len() as u64).to_le_bytes();
            self.w.write_all(&[1])?;
            self.w.write_all(&len)?;
            self.w.write_all(&crc32c::crc32c(&len).to_le_bytes())?;
            self.w.write_all(file)?;
        }
        Ok(())
    }

    pub fn record(&mut self, names: &[Vec<u8>], blob: &[u8]) -> io::Result<()> {
        if self.version >= 2 {
            self.w.write_all(&[0])?;
        }
        write_record(&mut self.w, names, blob)
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

fn write_record(w: &mut impl Write, names: &[Vec<u8>], blob: &[u8]) -> io::Result<()> {
    let mut h = Vec::new();
    h.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in names {
        let len = u16::try_from(n.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file name longer than 65535 bytes"))?;
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(n);
    }
    h.extend_from_slice(&(blob.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c(&h);
    w.write_all(&h)?;
    w.write_all(&crc.to_le_bytes())?;
    w.write_all(blob)
}

/// Reads records one by one, keeping the models the archive embeds (as model files, by hash).
pub struct Reader<R: Read> {
    r: R,
    index: usize,
    version: u16,
    models: HashMap<[u8; 32], Vec<u8>>,
}

impl<R: Read> Reader<R> {
    pub fn new(mut r: R) -> Result<Reader<R>, ArchiveError> {
        let mut pre = [0u8; 12];
        r.read_exact(&mut pre).map_err(|_| ArchiveError::BadMagic)?;
        if &pre[..8] != MAGIC {
            return Err(ArchiveError::BadMagic);
        }
        let v = u16::from_le_bytes([pre[8], pre[9]]);
        if !(1..=VERSION).contains(&v) {
            return Err(ArchiveError::Version(v));
        }
        Ok(Reader { r, index: 0, version: v, models: HashMap::new() })
    }

    /// The model files read so far, by their SHA-256.
    pub fn models(&self) -> &HashMap<[u8; 32], Vec<u8>> {
        &self.models
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, ArchiveError> {
        // read through `take` so that a bogus length cannot allocate more than the file holds
        let mut b = Vec::new();
        (&mut self.r).take(n as u64).read_to_end(&mut b)?;
        if b.len() < n {
            return Err(ArchiveError::Truncated(self.index));
        }
        Ok(b)
    }

    /// The next window record, or `None` at a clean end of the archive (models before it are
    /// kept, see [`Reader::models`]).
    pub fn next_record(&mut self) -> Result<Option<Record>, ArchiveError> {
        if self.version >= 2 {
            loop {
                let mut kind = [0u8; 1];
                if self.r.read(&mut kind)? == 0 {
                    return Ok(None);
                }
                match kind[0] {
                    0 => return self.window(),
                    1 => self.model()?,
                    k => return Err(ArchiveError::Kind(self.index, k)),
                }
            }
        }
        let mut first = [0u8; 4];
        match self.r.read(&mut first)? {
            0 => return Ok(None),
            4 => {}
            k => {
                let rest = self.exact(4 - k)?;
                first[k..].copy_from_slice(&rest);
            }
        }
        self.window_from(first)
    }

    fn model(&mut self) -> Result<(), ArchiveError> {
        let len = self.exact(8)?;
        let crc = self.exact(4)?;
        if crc32c::crc32c(&len).to_le_bytes() != crc[..] {
            return Err(ArchiveError::Model(self.index, "length checksum".into()));
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if n > MAX_MODEL_BYTES {
            return Err(ArchiveError::Model(self.index, format!("{n} bytes claimed")));
        }
        let file = self.exact(n as usize)?;
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(&file).into();
        self.models.insert(hash, file);
        Ok(())
    }

    fn window(&mut self) -> Result<Option<Record>, ArchiveError> {
        let first = self.exact(4)?;
        self.window_from(first.try_into().expect("4 bytes"))
    }

    /// The rest of a window record whose name count is `first`.
    fn window_from(&mut self, first: [u8; 4]) -> Result<Option<Record>, ArchiveError> {
        let mut h = first.to_vec();
        let n = u32::from_le_bytes(first) as usize;
        if n > 1 << 24 {
            return Err(ArchiveError::RecordCrc(self.index));
        }
        // Not `with_capacity(n)`: `n` is unchecked until the CRC, and each name takes 2 bytes.
        let mut names = Vec::new();
        for _ in 0..n {
            let l = self.exact(2)?;
            let len = u16::from_le_bytes([l[0], l[1]]) as usize;
            let name = self.exact(len)?;
            h.extend_from_slice(&l);
            h.extend_from_slice(&name);
            names.push(name);
        }
        let bl = self.exact(8)?;
        h.extend_from_slice(&bl);
        let crc = self.exact(4)?;
        if crc32c::crc32c(&h).to_le_bytes() != crc[..] {
            return Err(ArchiveError::RecordCrc(self.index));
        }
        let blob_len = u64::from_le_bytes(bl.try_into().expect("8 bytes"));
        let blob = self.exact(usize::try_from(blob_len).map_err(|_| ArchiveError::RecordCrc(self.index))?)?;
        self.index += 1;
        Ok(Some(Record { names, blob }))
    }

    pub fn records_read(&self) -> usize {
        self.index
    }
}

/// `bytes` with every checksum of an archive recomputed: each record header's, each model
/// length's, and those of each blob and model file ([`crate::codec::container::reseal`],
/// [`crate::model::file::reseal`]). For fuzzing and damage
/// tests: a mutated archive then reaches the checks behind the CRCs. Records are walked as the
/// reader walks them; the walk stops at the first that does not fit, leaving the rest as it is.
pub fn reseal(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return out;
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let mut at = 12;
    let u64_at = |b: &[u8], at: usize| b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
    while at < bytes.len() {
        let kind = if version >= 2 {
            at += 1;
            bytes[at - 1]
        } else {
            0
        };
        let (start, blob_at) = match kind {
            0 => {
                let Some(n) = bytes.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))) else { break };
                let mut p = at + 4;
                for _ in 0..n.min(1 << 24) {
                    let Some(l) = bytes.get(p..p + 2) else { break };
                    p += 2 + u16::from_le_bytes([l[0], l[1]]) as usize;
                }
                (at, p)
            }
            1 => (at, at),
            _ => break,
        };
        let Some(len) = u64_at(bytes, blob_at).and_then(|l| usize::try_from(l).ok()) else { break };
        let crc_at = blob_at + 8;
        if crc_at + 4 > bytes.len() {
            break;
        }
        let crc = crc32c::crc32c(&bytes[start..crc_at]);
        out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        let body = crc_at + 4;
        let Some(end) = body.checked_add(len).filter(|&e| e <= bytes.len()) else { break };
        let inner = if kind == 0 { crate::codec::container::reseal(&bytes[body..end]) } else { crate::model::file::reseal(&bytes[body..end]) };
        if let Some(inner) = inner {
            out[body..end].copy_from_slice(&inner);
        }
        at = end;
    }
    out
}
