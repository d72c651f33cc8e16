//! Checking one blob file (shared by `tezipfs fsck` and the daemon's scrub).
//!
//! Two levels: [`Level::Sections`] parses the container (magic, version, header CRC32C, the
//! header's structure, no trailing bytes) and checks the CRC32C of every section of every
//! entry; [`Level::Decode`] also decodes every entry and checks the length and CRC32C of the
//! file it rebuilds (the strongest check: it is what a reader does). A damaged frame breaks the
//! frames after it in its prediction chain, so those are reported too.

use crate::codec::container::{section_of, Blob, Body, Section};
use crate::codec::predict::ModelSource;
use crate::codec::Decoder;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Container structure and every checksum of the stored bytes.
    Sections,
    /// As `Sections`, then every entry decoded and checked against its file's CRC32C.
    Decode,
}

/// What a blob holds, as far as it could be read.
#[derive(Clone, Debug, Default)]
pub struct BlobCheck {
    /// Entries in the header (`None`: the header cannot be read).
    pub entries: Option<u32>,
    /// The model the blob names, if any.
    pub model: Option<[u8; 32]>,
    /// Original length of each entry's file, and whether it is a frame (from the header).
    pub lens: Vec<(u64, bool)>,
    /// The whole blob is unreadable (bad magic, header CRC, malformed header), and why.
    pub whole: Option<String>,
    /// Entries that cannot be read, and why.
    pub bad: BTreeMap<u32, String>,
}

impl BlobCheck {
    pub fn is_ok(&self) -> bool {
        self.whole.is_none() && self.bad.is_empty()
    }

    /// Whether entry `slot` cannot be read (why), including a slot the blob does not have.
    pub fn entry_problem(&self, slot: u32) -> Option<String> {
        if let Some(w) = &self.whole {
            return Some(w.clone());
        }
        if let Some(n) = self.entries {
            if slot >= n {
                return Some(format!("entry {slot} does not exist (the blob holds {n})"));
            }
        }
        self.bad.get(&slot).cloned()
    }
}

/// The sections of an entry, named.
fn frame_sections(body: &Body) -> Vec<(&'static str, Section)> {
    match body {
        Body::Opaque { data, .. } => vec![("data", *data)],
        Body::Frame(f) => vec![("skeleton", f.skeleton), ("codes", f.codes), ("escapes", f.escapes), ("motion", f.motion)],
    }
}

/// Check the bytes of a blob at `level`. `models`: where a blob's learned model is found for a
/// decode (a blob whose model is not there gets only the section checks: the missing model is a
/// problem of its own, reported by the caller).
pub fn check(bytes: &[u8], level: Level, models: Option<Arc<dyn ModelSource + Send + Sync>>) -> BlobCheck {
    let blob = match Blob::parse(bytes) {
        Ok(b) => b,
        Err(e) => return BlobCheck { whole: Some(e.to_string()), ..Default::default() },
    };
    let header = &blob.header;
    let model = header.params.as_ref().map(|p| p.model).filter(|m| *m != [0; 32]);
    let lens = header.entries.iter().map(|e| (e.original_len, matches!(e.body, Body::Frame(_)))).collect();
    let mut out = BlobCheck { entries: Some(header.entries.len() as u32), model, lens, ..Default::default() };
    let payload = &bytes[blob.payload_offset(bytes)..];
    // Frame entries in chain order: a bad frame makes every later frame unreadable.
    let chain: Vec<usize> = header.entries.iter().enumerate().filter(|(_, e)| matches!(e.body, Body::Frame(_))).map(|(i, _)| i).collect();
    // A sliced blob (version 7): a frame is damaged where any slice's stripe of it is.
    let mut stripe_bad: BTreeMap<usize, String> = BTreeMap::new();
    for (s, &sec) in header.slices.iter().flat_map(|sl| sl.blobs.iter().enumerate()) {
        let Some(inner) = payload.get(sec.offset as usize..sec.offset.saturating_add(sec.len) as usize).and_then(|b| Blob::parse(b).ok()) else { continue };
        for (k, e) in inner.header.entries.iter().enumerate() {
            if let Some(err) = frame_sections(&e.body).into_iter().find_map(|(what, x)| inner.section(k, what, x).err()) {
                stripe_bad.entry(k).or_insert(format!("slice {s}: {err}"));
            }
        }
    }
    let mut chain_broken: Option<(usize, String)> = None;
    for (i, e) in header.entries.iter().enumerate() {
        let bad = frame_sections(&e.body).into_iter().find_map(|(what, s)| section_of(payload, i, what, s).err()).map(|e| e.to_string());
        let bad = bad.or_else(|| chain.iter().position(|&c| c == i).and_then(|k| stripe_bad.get(&k).cloned()));
        match (&e.body, bad) {
            (Body::Frame(_), Some(err)) if chain_broken.is_none() => {
                out.bad.insert(i as u32, err.clone());
                chain_broken = Some((i, err));
            }
            (Body::Frame(_), _) => {
                if let Some((k, _)) = &chain_broken {
                    out.bad.insert(i as u32, format!("predicted from entry {k}, which is damaged"));
                }
            }
            (Body::Opaque { .. }, Some(err)) => {
                out.bad.insert(i as u32, err);
            }
            (Body::Opaque { .. }, None) => {}
        }
    }
    if level == Level::Sections || !out.bad.is_empty() {
        return out;
    }
    let models = match (model, models) {
        (None, _) => Arc::new(crate::codec::predict::NoModels) as Arc<dyn ModelSource + Send + Sync>,
        (Some(_), Some(m)) => m,
        (Some(_), None) => return out,
    };
    let mut dec = match Decoder::with_models(Arc::from(bytes), models) {
        Ok(d) => d,
        Err(e) => {
            out.whole = Some(e.to_string());
            return out;
        }
    };
    let mut first_bad_frame: Option<usize> = None;
    for i in 0..header.entries.len() {
        if let (Some(k), true) = (first_bad_frame, chain.contains(&i)) {
            out.bad.insert(i as u32, format!("predicted from entry {k}, which does not decode"));
            continue;
        }
        if let Err(e) = dec.decode(i, |_, _| {}) {
            out.bad.insert(i as u32, e.to_string());
            if chain.contains(&i) {
                first_bad_frame = Some(i);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_window, DType, FormatSpec, Options, RawSpec};

    /// Four frames and an opaque file, coded into one blob.
    fn blob() -> Vec<u8> {
        let frames = crate::fixtures::generate_raw(&crate::fixtures::SequenceSpec::detector_u16(32, 16, 4, 3));
        let mut files: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let text = b"not a frame at all, stored whole".repeat(20);
        files.push(&text);
        let opts = Options { format: FormatSpec::Raw(RawSpec { width: 32, height: 16, dtype: DType::U16, skip: 0 }), ..Options::default() };
        encode_window(&files, &opts).unwrap().blob
    }

    #[test]
    fn a_sound_blob_passes_both_levels() {
        let b = blob();
        for level in [Level::Sections, Level::Decode] {
            let c = check(&b, level, None);
            assert!(c.is_ok(), "{level:?}: {c:?}");
            assert_eq!(c.entries, Some(5));
            assert_eq!(c.lens.len(), 5);
        }
    }

    #[test]
    fn damage_is_found_and_named_by_entry_and_chain() {
        let b = blob();
        let parsed = Blob::parse(&b).unwrap();
        let start = parsed.payload_offset(&b);
        // A byte of the codes of the second frame: that frame and the frames after it.
        let Body::Frame(f) = &parsed.header.entries[1].body else { panic!("entry 1 is a frame") };
        let at = start + f.codes.offset as usize + f.codes.len as usize / 2;
        drop(parsed);
        let mut bad = b.clone();
        bad[at] ^= 0x10;
        let c = check(&bad, Level::Sections, None);
        assert_eq!(c.bad.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3], "{c:?}");
        assert!(c.entry_problem(0).is_none() && c.entry_problem(4).is_none());
        assert!(c.entry_problem(9).is_some(), "a slot the blob does not have");
        // The header: the whole blob.
        let mut bad = b.clone();
        bad[20] ^= 1;
        let c = check(&bad, Level::Decode, None);
        assert!(c.whole.is_some() && c.entry_problem(0).is_some(), "{c:?}");
        // Truncated.
        let c = check(&b[..b.len() - 3], Level::Sections, None);
        assert!(!c.is_ok());
    }

    #[test]
    fn damage_to_a_slice_names_the_frame() {
        // Frames of 32 x 64 in slices of 16 rows (container version 7), an opaque file second.
        let frames = crate::fixtures::generate_raw(&crate::fixtures::SequenceSpec::detector_u16(32, 64, 4, 5));
        let text = b"not a frame at all, stored whole".repeat(20);
        let mut files: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        files.insert(1, &text);
        let opts =
            Options { format: FormatSpec::Raw(RawSpec { width: 32, height: 64, dtype: DType::U16, skip: 0 }), slice_pixels: 32 * 16, ..Options::default() };
        let b = encode_window(&files, &opts).unwrap().blob;
        assert_eq!(b[8], 7);
        for level in [Level::Sections, Level::Decode] {
            assert!(check(&b, level, None).is_ok(), "{level:?}");
        }
        // The codes of the third frame (entry 3) in slice 2.
        let parsed = Blob::parse(&b).unwrap();
        let sl = parsed.header.slices.as_ref().unwrap();
        let slice_start = parsed.payload_offset(&b) + sl.blobs[2].offset as usize;
        let inner = Blob::parse(&b[slice_start..slice_start + sl.blobs[2].len as usize]).unwrap();
        let Body::Frame(f) = &inner.header.entries[2].body else { panic!("a frame") };
        let at =
            slice_start + inner.payload_offset(&b[slice_start..slice_start + sl.blobs[2].len as usize]) + f.codes.offset as usize + f.codes.len as usize / 2;
        drop(parsed);
        let mut bad = b.clone();
        bad[at] ^= 0x10;
        let c = check(&bad, Level::Sections, None);
        assert_eq!(c.bad.keys().copied().collect::<Vec<_>>(), vec![3, 4], "{c:?}");
        assert!(c.entry_problem(3).unwrap().contains("slice 2"), "{c:?}");
    }
}
