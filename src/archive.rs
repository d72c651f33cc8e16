//! The offline archive written by `tezipfs compress` (format version 1, see `docs/FORMAT.md`):
//! a sequence of windows, each a list of file names and one blob.
//!
//! ```text
//! magic "TZIPARCH" | u16 version | u16 reserved
//! record*: u32 n_names | (u16 len, name bytes)* | u64 blob_len | u32 crc32c(record header) | blob
//! ```

use crate::codec::container::BlobError;
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"TZIPARCH";
pub const VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a tezipfs archive (bad magic)")]
    BadMagic,
    #[error("archive format version {0} is not supported (supports {VERSION})")]
    Version(u16),
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

pub fn write_preamble(w: &mut impl Write) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&0u16.to_le_bytes())
}

pub fn write_record(w: &mut impl Write, names: &[Vec<u8>], blob: &[u8]) -> io::Result<()> {
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

/// Reads records one by one.
pub struct Reader<R: Read> {
    r: R,
    index: usize,
}

impl<R: Read> Reader<R> {
    pub fn new(mut r: R) -> Result<Reader<R>, ArchiveError> {
        let mut pre = [0u8; 12];
        r.read_exact(&mut pre).map_err(|_| ArchiveError::BadMagic)?;
        if &pre[..8] != MAGIC {
            return Err(ArchiveError::BadMagic);
        }
        let v = u16::from_le_bytes([pre[8], pre[9]]);
        if v != VERSION {
            return Err(ArchiveError::Version(v));
        }
        Ok(Reader { r, index: 0 })
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

    /// The next record, or `None` at a clean end of the archive.
    pub fn next_record(&mut self) -> Result<Option<Record>, ArchiveError> {
        let mut first = [0u8; 4];
        match self.r.read(&mut first)? {
            0 => return Ok(None),
            4 => {}
            k => {
                let rest = self.exact(4 - k)?;
                first[k..].copy_from_slice(&rest);
            }
        }
        let mut h = first.to_vec();
        let n = u32::from_le_bytes(first) as usize;
        if n > 1 << 24 {
            return Err(ArchiveError::RecordCrc(self.index));
        }
        let mut names = Vec::with_capacity(n);
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
