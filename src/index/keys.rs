//! Key encodings of the index (schema version 2). One tree; the first byte says what a key is.
//! Inode numbers are big-endian so that keys sort by number.
//!
//! | key | value |
//! | --- | --- |
//! | `S` | schema version (u32) |
//! | `C` + name | counter (u64): `Cino` next inode, `Cblob` next blob id, `Cscrub` the scrub's next blob |
//! | `I` + ino | [`Inode`](super::Inode) |
//! | `D` + parent ino + name | (child ino, [`Kind`](super::Kind)) |
//! | `X` + ino + name | xattr value (raw bytes) |
//! | `B` + blob id | [`Blob`](super::Blob) |
//! | `M` + blob id | the hash of the model the blob was coded with (32 bytes; blobs without one have none) |
//! | `R` + model hash | how many blobs need the model (u64) |
//! | `N` + name | the hash of the model named so (32 bytes) |
//! | `A` + dir ino | the hash of the model trained for the directory under `model=auto` (32 bytes) |

pub const SCHEMA: &[u8] = b"S";
pub const NEXT_INO: &[u8] = b"Cino";
pub const NEXT_BLOB: &[u8] = b"Cblob";
/// The next blob id the daemon's scrub checks (absent: no scrub in progress).
pub const SCRUB_NEXT: &[u8] = b"Cscrub";
pub const INODE: &[u8] = b"I";
pub const BLOB: &[u8] = b"B";
pub const MODEL_NAME: &[u8] = b"N";
pub const DIR_MODEL: &[u8] = b"A";

fn with_u64(tag: u8, v: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(tag);
    k.extend_from_slice(&v.to_be_bytes());
    k
}

pub fn inode(ino: u64) -> Vec<u8> {
    with_u64(b'I', ino)
}

pub fn dirent_prefix(parent: u64) -> Vec<u8> {
    with_u64(b'D', parent)
}

pub fn dirent(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = dirent_prefix(parent);
    k.extend_from_slice(name);
    k
}

pub fn xattr_prefix(ino: u64) -> Vec<u8> {
    with_u64(b'X', ino)
}

pub fn xattr(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut k = xattr_prefix(ino);
    k.extend_from_slice(name);
    k
}

pub fn blob(id: u64) -> Vec<u8> {
    with_u64(b'B', id)
}

pub fn blob_model(id: u64) -> Vec<u8> {
    with_u64(b'M', id)
}

pub fn model_refs(hash: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![b'R'];
    k.extend_from_slice(hash);
    k
}

pub fn model_name(name: &[u8]) -> Vec<u8> {
    let mut k = MODEL_NAME.to_vec();
    k.extend_from_slice(name);
    k
}

pub fn dir_model(ino: u64) -> Vec<u8> {
    with_u64(b'A', ino)
}

/// A readable form of a key, for error messages.
pub fn describe(key: &[u8]) -> String {
    match key.split_first() {
        Some((b'R', rest)) if rest.len() == 32 => format!("R:{}", rest.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        Some((&t, rest)) if rest.len() >= 8 && matches!(t, b'I' | b'D' | b'X' | b'B' | b'M' | b'A') => {
            let n = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            format!("{}:{n}{}", t as char, if rest.len() > 8 { format!(":{}", String::from_utf8_lossy(&rest[8..])) } else { String::new() })
        }
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}
