//! From a [`Snapshot`] to the list of problems, each with the paths it affects and its fixes.

use super::blobs::{self, BlobCheck, Level};
use super::scan::Snapshot;
use super::{CheckError, Fix, Paths, Problem};
use crate::codec::predict::{hash_hex, ModelSource};
use crate::index::{keys, Blob, Data, Inode, Kind, Timestamp};
use crate::vfs::ROOT;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Blob and model checks, kept between the passes of a repair (files do not change under them
/// unless deleted).
#[derive(Default)]
pub struct Cache {
    blobs: BTreeMap<u64, (u64, BlobCheck)>,
    /// Model file name -> whether its bytes hash to its name.
    models: BTreeMap<String, bool>,
}

impl Cache {
    pub fn checked(&self) -> usize {
        self.blobs.len()
    }

    pub fn bytes(&self) -> u64 {
        self.blobs.values().map(|(len, _)| len).sum()
    }
}

fn problem(code: &'static str, detail: String, paths: Vec<String>, repair: &str, fixes: Vec<Fix>) -> Problem {
    Problem { code, detail, paths, loss: false, after_crash: false, repair: repair.into(), repaired: false, fixes }
}

fn crash(mut p: Problem) -> Problem {
    p.after_crash = true;
    p
}

fn loss(mut p: Problem) -> Problem {
    p.loss = true;
    p
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records encode")
}

pub fn analyze(root: &Path, s: &Snapshot, level: Level, models: &Arc<dyn ModelSource + Send + Sync>, cache: &mut Cache) -> Result<Vec<Problem>, CheckError> {
    let paths = Paths::new(&s.dirents);
    let mut out = Vec::new();

    // ----- models: every file's SHA-256 against its name -----
    cache.models.retain(|n, _| s.model_files.contains(n));
    for name in &s.model_files {
        if name.ends_with(".partial") {
            out.push(crash(problem(
                "model-partial",
                format!("models/{name}: a model file that was never completed"),
                vec![],
                "delete it",
                vec![Fix::DeleteFile(root.join("models").join(name))],
            )));
            continue;
        }
        let Some(h) = crate::model::registry::parse_hash(name) else {
            out.push(problem("model-stray", format!("models/{name}: not a model file name"), vec![], "none (left for the administrator)", vec![]));
            continue;
        };
        if !cache.models.contains_key(name) {
            let p = root.join("models").join(name);
            let ok = std::fs::read(&p).map(|b| crate::model::file::hash(&b) == h).unwrap_or(false);
            cache.models.insert(name.clone(), ok);
        }
    }
    let model_state = |h: &[u8; 32]| -> Option<bool> { cache.models.get(&hash_hex(h)).copied() };

    // ----- blobs: every file checked once -----
    cache.blobs.retain(|id, (len, _)| s.blob_files.get(id) == Some(len));
    for (&id, &len) in &s.blob_files {
        if cache.blobs.contains_key(&id) {
            continue;
        }
        let path = root.join("blobs").join(format!("{id}.tzb"));
        let check = match std::fs::read(&path) {
            Ok(bytes) => {
                let first = blobs::check(&bytes, Level::Sections, None);
                match (level, first.model) {
                    (Level::Sections, _) => first,
                    // A blob whose model is missing or corrupt gets the section checks only:
                    // the model is the problem, reported below.
                    (Level::Decode, Some(m)) if model_state(&m) != Some(true) => first,
                    (Level::Decode, _) if !first.is_ok() => first,
                    (Level::Decode, _) => blobs::check(&bytes, Level::Decode, Some(models.clone())),
                }
            }
            Err(e) => BlobCheck { whole: Some(format!("cannot read the file: {e}")), ..Default::default() },
        };
        cache.blobs.insert(id, (len, check));
    }
    let check_of = |id: u64| cache.blobs.get(&id).map(|(_, c)| c);

    // ----- directory entries -----
    let mut links: BTreeMap<u64, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    // Corrupt entries whose inode can be found again: (parent, name) -> ino.
    let restorable = restorable_dirents(s);
    for d in &s.dirents {
        let key = keys::dirent(d.parent, &d.name);
        let at = paths.join(d.parent, &d.name);
        let Some((ino, kind)) = d.child else {
            match restorable.get(&(d.parent, d.name.clone())) {
                Some(i) => out.push(problem(
                    "dirent-corrupt",
                    format!("the entry {at} does not decode"),
                    vec![at.clone()],
                    &format!("write it again for inode {} (the one inode of that directory no entry names)", i.ino),
                    vec![Fix::Put(key, enc(&(i.ino, i.kind)))],
                )),
                None => out.push(problem(
                    "dirent-corrupt",
                    format!("the entry {at} does not decode"),
                    vec![at.clone()],
                    "delete it (the inode it named, if any, goes to /lost+found)",
                    vec![Fix::DeleteKey(key)],
                )),
            }
            continue;
        };
        let parent_ok = match s.inodes.get(&d.parent) {
            Some(p) => p.kind == Kind::Dir,
            None => s.bad_inodes.contains_key(&d.parent),
        };
        if !parent_ok {
            out.push(problem(
                "dirent-orphan",
                format!("the entry {at} is in inode {}, which is not a directory", d.parent),
                vec![at],
                "delete the entry (the inode it names, if no other entry does, goes to /lost+found)",
                vec![Fix::DeleteKey(key)],
            ));
            continue;
        }
        match s.inodes.get(&ino) {
            None if s.bad_inodes.contains_key(&ino) => {}
            None => {
                out.push(problem(
                    "dirent-dangling",
                    format!("the entry {at} names inode {ino}, which does not exist"),
                    vec![at],
                    "delete the entry",
                    vec![Fix::DeleteKey(key)],
                ));
                continue;
            }
            Some(i) if i.kind != kind => out.push(problem(
                "dirent-kind",
                format!("the entry {at} says {kind:?}, inode {ino} is a {:?}", i.kind),
                vec![at],
                "write the entry with the inode's kind",
                vec![Fix::Put(key, enc(&(ino, i.kind)))],
            )),
            Some(_) => {}
        }
        links.entry(ino).or_default().push((d.parent, d.name.clone()));
        if kind == Kind::Dir {
            *subdirs.entry(d.parent).or_default() += 1;
        }
    }
    for ((parent, name), i) in &restorable {
        links.entry(i.ino).or_default().push((*parent, name.clone()));
    }

    // ----- inodes -----
    let mut refs: BTreeMap<u64, Vec<(u64, u32)>> = BTreeMap::new();
    let mut blob_missing: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut blob_bad: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for i in s.inodes.values() {
        let names = links.get(&i.ino).map(Vec::len).unwrap_or(0) as u32;
        let p = paths.of(i.ino);
        if i.ino != ROOT && names == 0 && i.nlink == 0 {
            out.push(crash(problem(
                "inode-unlinked",
                format!("inode {} was unlinked while open and not yet deleted", i.ino),
                vec![],
                "delete it (the daemon does the same when it starts)",
                vec![Fix::DeleteInode(i.ino)],
            )));
            continue;
        }
        if i.ino != ROOT && names == 0 {
            out.push(problem(
                "inode-unreachable",
                format!("inode {} ({:?}, {} bytes) has {} link(s) but no directory names it", i.ino, i.kind, i.size, i.nlink),
                p.clone(),
                &format!("link it into /lost+found as #{}", i.ino),
                vec![Fix::LostFound(i.ino)],
            ));
        }
        let want = if i.kind == Kind::Dir { 2 + subdirs.get(&i.ino).copied().unwrap_or(0) } else { names.max(1) };
        let mut fixed = i.clone();
        fixed.nlink = want;
        let mut what = Vec::new();
        if i.nlink != want {
            what.push(format!("link count {} where {} entries name it (should be {want})", i.nlink, names));
        }
        if let Some(l) = links.get(&i.ino) {
            if i.ino != ROOT && !l.iter().any(|(parent, _)| *parent == i.parent) {
                fixed.parent = l[0].0;
                what.push(format!("parent {} is not a directory that names it ({})", i.parent, l[0].0));
            }
        }
        if !what.is_empty() {
            out.push(problem(
                "inode-links",
                format!("inode {}: {}", i.ino, what.join("; ")),
                p.clone(),
                "set the link count (and parent) from the directory entries",
                vec![Fix::Put(keys::inode(i.ino), enc(&fixed))],
            ));
        }
        match &i.data {
            Data::Staged if i.kind == Kind::File && i.size > 0 && !s.staging_files.contains_key(&i.ino.to_string()) => {
                out.push(loss(problem(
                    "staging-missing",
                    format!("inode {} ({} bytes) is staged but staging/{} is missing", i.ino, i.size, i.ino),
                    p,
                    "none: its bytes are gone; the file stays and reads EIO",
                    vec![],
                )));
            }
            Data::Compressed { blob, slot, .. } => {
                refs.entry(*blob).or_default().push((i.ino, *slot));
                match check_of(*blob) {
                    None => blob_missing.entry(*blob).or_default().push(i.ino),
                    Some(c) => {
                        if let Some(why) = c.entry_problem(*slot) {
                            blob_bad.entry(*blob).or_default().push((i.ino, why));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let paths_of = |inos: &mut dyn Iterator<Item = u64>| -> Vec<String> { inos.flat_map(|i| paths.of(i)).collect() };
    for (blob, inos) in &blob_missing {
        out.push(loss(problem(
            "blob-missing",
            format!("blob {blob} (blobs/{blob}.tzb) is missing; {} file(s) are in it", inos.len()),
            paths_of(&mut inos.iter().copied()),
            "none: the files stay and read EIO",
            vec![],
        )));
    }
    for (blob, bad) in &blob_bad {
        out.push(loss(problem(
            "blob-corrupt",
            format!("blob {blob} is damaged: {}", bad[0].1),
            paths_of(&mut bad.iter().map(|(i, _)| *i)),
            "none: the files stay and read EIO",
            vec![],
        )));
    }

    // ----- corrupt inode records -----
    rebuild_inodes(s, &paths, &links, &subdirs, &refs, &cache.blobs, &mut out);

    // ----- blob records and files -----
    let ids: BTreeSet<u64> =
        s.blob_files.keys().chain(s.blobs.keys()).chain(s.bad_blobs.keys()).chain(refs.keys()).chain(s.blob_models.keys()).copied().collect();
    let mut model_count: BTreeMap<[u8; 32], u64> = BTreeMap::new();
    let mut model_users: BTreeMap<[u8; 32], Vec<u64>> = BTreeMap::new();
    for id in ids {
        let r = refs.get(&id);
        let check = check_of(id);
        if r.is_none() {
            // Nothing refers to it. A corrupt inode record may, if its record counts one.
            if !s.bad_inodes.is_empty() && s.blobs.get(&id).is_some_and(|b| b.live > 0) {
                out.push(problem(
                    "blob-orphan",
                    format!("blob {id}: no inode refers to it, but its record counts {} and an inode record is corrupt", s.blobs[&id].live),
                    vec![],
                    "none: kept while a corrupt inode record may refer to it",
                    vec![],
                ));
            } else if check.is_some() {
                out.push(crash(problem("blob-orphan", format!("blob {id}: no file refers to it"), vec![], "delete it", vec![Fix::DeleteBlob(id)])));
            } else {
                out.push(problem(
                    "blob-record-orphan",
                    format!("blob {id}: a record without a file or a file in it"),
                    vec![],
                    "delete the record",
                    vec![Fix::DeleteBlob(id)],
                ));
            }
            continue;
        }
        let r = r.expect("checked above");
        let old = s.blobs.get(&id);
        let entries = check.and_then(|c| c.entries).or(old.map(|b| b.entries)).unwrap_or_else(|| r.iter().map(|(_, sl)| sl + 1).max().unwrap_or(1));
        let bytes = s.blob_files.get(&id).copied().or(old.map(|b| b.bytes)).unwrap_or(0);
        // While an inode record is corrupt, a live count above the references found is kept:
        // it is what finds the corrupt inode's data again.
        let live = if s.bad_inodes.is_empty() { r.len() as u32 } else { old.map_or(0, |b| b.live).max(r.len() as u32) };
        let want = Blob { id, entries, live, bytes };
        if old != Some(&want) {
            let what = match (old, s.bad_blobs.get(&id)) {
                (_, Some(why)) => format!("blob {id}: its record does not decode ({why})"),
                (None, None) => format!("blob {id}: {} file(s) are in it but it has no record", r.len()),
                (Some(o), None) => {
                    format!("blob {id}: its record says {} entries, {} live, {} bytes; found {entries}, {}, {bytes}", o.entries, o.live, o.bytes, r.len())
                }
            };
            out.push(problem("blob-record", what, vec![], "write the record from the blob file and the inodes", vec![Fix::Put(keys::blob(id), enc(&want))]));
        }
        // The model it was coded with: from its header when it can be read.
        let stored = s.blob_models.get(&id);
        let model = match check {
            Some(c) if c.entries.is_some() => c.model,
            _ => stored.copied().flatten(),
        };
        if stored.copied().flatten() != model || stored.is_some_and(|v| v.is_none()) {
            let fix = match model {
                Some(h) => Fix::Put(keys::blob_model(id), h.to_vec()),
                None => Fix::DeleteKey(keys::blob_model(id)),
            };
            out.push(problem(
                "blob-model",
                format!("blob {id}: the index's record of its model does not match its header"),
                vec![],
                "write it from the header",
                vec![fix],
            ));
        }
        if let Some(h) = model {
            *model_count.entry(h).or_default() += 1;
            model_users.entry(h).or_default().extend(r.iter().map(|(i, _)| *i));
        }
    }

    // ----- models: references, names, directories -----
    for (h, users) in &model_users {
        let state = model_state(h);
        if state != Some(true) {
            out.push(loss(problem(
                if state.is_none() { "model-missing" } else { "model-corrupt" },
                format!(
                    "model {} is {}; {} file(s) were coded with it",
                    hash_hex(h),
                    if state.is_none() { "missing" } else { "corrupt (its bytes do not hash to its name)" },
                    users.len()
                ),
                paths_of(&mut users.iter().copied()),
                "none: import the model again (tezipfs model import) to read them; until then they read EIO",
                vec![],
            )));
        }
    }
    let all: BTreeSet<[u8; 32]> = model_count.keys().chain(s.model_refs.keys()).copied().collect();
    for h in all {
        let want = model_count.get(&h).copied().unwrap_or(0);
        let have = s.model_refs.get(&h).copied();
        if have != Some(Some(want)) && !(want == 0 && have.is_none()) {
            let fix = if want == 0 { Fix::DeleteKey(keys::model_refs(&h)) } else { Fix::Put(keys::model_refs(&h), enc(&want)) };
            out.push(problem(
                "model-refs",
                format!("model {}: {want} blob(s) need it, the index counts {have:?}", hash_hex(&h)),
                vec![],
                "set the count",
                vec![fix],
            ));
        }
    }
    for (name, h) in &s.model_names {
        let shown = String::from_utf8_lossy(name);
        match h {
            None => out.push(problem(
                "model-name",
                format!("model name {shown:?}: its record does not decode"),
                vec![],
                "delete the name",
                vec![Fix::DeleteKey(keys::model_name(name))],
            )),
            Some(h) if model_state(h).is_none() => out.push(problem(
                "model-name",
                format!("model name {shown:?} points at model {}, which is missing", hash_hex(h)),
                vec![],
                "delete the name",
                vec![Fix::DeleteKey(keys::model_name(name))],
            )),
            Some(_) => {}
        }
    }
    for (dir, h) in &s.dir_models {
        let why = match h {
            None => Some("its record does not decode".to_string()),
            Some(_) if !s.inodes.contains_key(dir) && !s.bad_inodes.contains_key(dir) => Some("the directory does not exist".into()),
            Some(h) if model_state(h).is_none() => Some(format!("model {} is missing", hash_hex(h))),
            Some(_) => None,
        };
        if let Some(why) = why {
            out.push(problem(
                "dir-model",
                format!("the trained model of directory {dir}: {why}"),
                paths.of(*dir),
                "delete the record (the directory trains a new model)",
                vec![Fix::DeleteKey(keys::dir_model(*dir))],
            ));
        }
    }

    // ----- staging, tmp, xattrs, stray keys, counters -----
    for name in s.staging_files.keys() {
        let used = name.parse::<u64>().ok().is_some_and(|ino| s.bad_inodes.contains_key(&ino) || s.inodes.get(&ino).is_some_and(|i| i.data == Data::Staged));
        if !used {
            out.push(crash(problem(
                "staging-orphan",
                format!("staging/{name}: no staged inode refers to it"),
                vec![],
                "delete it",
                vec![Fix::DeleteFile(root.join("staging").join(name))],
            )));
        }
    }
    for p in &s.tmp_files {
        out.push(crash(problem(
            "tmp-leftover",
            format!("{}: left in tmp/ by an interrupted write", p.display()),
            vec![],
            "delete it",
            vec![Fix::DeleteFile(p.clone())],
        )));
    }
    for p in &s.stray_blob_files {
        out.push(problem("blob-stray", format!("{}: not a blob file name", p.display()), vec![], "none (left for the administrator)", vec![]));
    }
    for (ino, ks) in &s.xattr_keys {
        if !s.inodes.contains_key(ino) && !s.bad_inodes.contains_key(ino) {
            out.push(problem(
                "xattr-orphan",
                format!("{} attribute(s) of inode {ino}, which does not exist", ks.len()),
                vec![],
                "delete them",
                ks.iter().map(|k| Fix::DeleteKey(k.clone())).collect(),
            ));
        }
    }
    for (k, why) in &s.bad_keys {
        out.push(problem("key-unknown", format!("index key {}: {why}", keys::describe(k)), vec![], "delete it", vec![Fix::DeleteKey(k.clone())]));
    }
    if s.schema.as_ref().and_then(|v| postcard::from_bytes::<u32>(v).ok()).is_none() {
        out.push(problem(
            "schema",
            "the index's schema version record is missing or does not decode".into(),
            vec![],
            "write version 2",
            vec![Fix::Put(keys::SCHEMA.to_vec(), enc(&crate::index::SCHEMA_VERSION))],
        ));
    }
    let max_ino = s.inodes.keys().chain(s.bad_inodes.keys()).max().copied().unwrap_or(ROOT);
    let max_blob = s.blob_files.keys().chain(s.blobs.keys()).chain(refs.keys()).max().copied().unwrap_or(0);
    for (key, have, min, what) in [(keys::NEXT_INO, s.next_ino, max_ino + 1, "inode"), (keys::NEXT_BLOB, s.next_blob, max_blob + 1, "blob")] {
        let ok = match have {
            Some(Some(n)) => n >= min,
            // A store that never made a blob has no blob counter.
            None => what == "blob" && max_blob == 0,
            Some(None) => false,
        };
        if !ok {
            let p = problem(
                "counter",
                format!("the next {what} number is {have:?}, at or below one in use ({})", min - 1),
                vec![],
                &format!("set it to {min}"),
                vec![Fix::Put(key.to_vec(), enc(&min))],
            );
            // A blob id is taken (an index batch not yet flushed) before the blob is written: a
            // kill -9 can lose the counter's step and leave the blob as an orphan file. Only
            // orphan blob files at or above the counter: a crash leftover (the next window
            // would write its blob over it).
            let from = have.flatten().unwrap_or(0);
            let crash_only = what == "blob"
                && s.blob_files
                    .keys()
                    .chain(s.blobs.keys())
                    .chain(refs.keys())
                    .filter(|id| **id >= from)
                    .all(|id| !refs.contains_key(id) && !s.blobs.contains_key(id));
            out.push(if crash_only { crash(p) } else { p });
        }
    }
    Ok(out)
}

/// Corrupt directory entries that can be written again: the entry's directory and name are in
/// its key; its inode is the one inode whose parent is that directory and that no entry names,
/// when there is exactly one (and one corrupt entry in that directory).
fn restorable_dirents(s: &Snapshot) -> BTreeMap<(u64, Vec<u8>), Inode> {
    let named: BTreeSet<u64> = s.dirents.iter().filter_map(|d| d.child.map(|c| c.0)).collect();
    let mut out = BTreeMap::new();
    let mut per_dir: BTreeMap<u64, Vec<&Vec<u8>>> = BTreeMap::new();
    for d in s.dirents.iter().filter(|d| d.child.is_none()) {
        per_dir.entry(d.parent).or_default().push(&d.name);
    }
    for (dir, names) in per_dir {
        let cands: Vec<&Inode> = s.inodes.values().filter(|i| i.ino != ROOT && i.parent == dir && i.nlink > 0 && !named.contains(&i.ino)).collect();
        if let ([name], [i]) = (&names[..], &cands[..]) {
            out.insert((dir, (*name).clone()), (*i).clone());
        }
    }
    out
}

/// Inode records that do not decode: rebuilt when what they held can be found again (a
/// directory; a staged file from its staging file; a compressed file from the one blob entry no
/// inode claims), else reported as lost (they stay, and read EIO).
fn rebuild_inodes(
    s: &Snapshot,
    paths: &Paths,
    links: &BTreeMap<u64, Vec<(u64, Vec<u8>)>>,
    subdirs: &BTreeMap<u64, u32>,
    refs: &BTreeMap<u64, Vec<(u64, u32)>>,
    checks: &BTreeMap<u64, (u64, BlobCheck)>,
    out: &mut Vec<Problem>,
) {
    // Blob entries no inode claims, in blobs whose record counts more files than refer to them.
    // (A blob whose record does not decode may have lost a reference too.)
    let mut unclaimed = Vec::new();
    for id in s.blobs.keys().chain(s.bad_blobs.keys()) {
        let r = refs.get(id).map(Vec::as_slice).unwrap_or(&[]);
        if s.blobs.get(id).is_none_or(|b| b.live as usize > r.len()) {
            if let Some((bytes, c)) = checks.get(id) {
                for (slot, (len, frame)) in c.lens.iter().enumerate() {
                    if !r.iter().any(|(_, sl)| *sl as usize == slot) {
                        unclaimed.push((*id, slot as u32, *len, *frame, bytes / c.lens.len().max(1) as u64));
                    }
                }
            }
        }
    }
    let need_blob: Vec<u64> =
        s.bad_inodes.keys().filter(|ino| kind_of(s, **ino) == Some(Kind::File) && !s.staging_files.contains_key(&ino.to_string())).copied().collect();
    let now = Timestamp::now();
    for (ino, why) in &s.bad_inodes {
        let p = paths.of(*ino);
        let l = links.get(ino);
        let parent = l.and_then(|l| l.first()).map(|(p, _)| *p).unwrap_or(ROOT);
        let owner = s.inodes.get(&parent).map(|d| (d.uid, d.gid)).unwrap_or((0, 0));
        let names = l.map(Vec::len).unwrap_or(0) as u32;
        let kind = if *ino == ROOT { Some(Kind::Dir) } else { kind_of(s, *ino) };
        let base = |kind: Kind, perm: u32, nlink: u32, size: u64, data: Data, note: &str| Inode {
            ino: *ino,
            kind,
            perm,
            uid: owner.0,
            gid: owner.1,
            nlink,
            size,
            rdev: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent,
            data,
            generation: 1,
            target: Vec::new(),
            note: Some(format!("rebuilt by fsck: {note}")),
        };
        let staged = s.staging_files.get(&ino.to_string()).copied();
        let rebuilt = match (kind, staged) {
            (Some(Kind::Dir), _) => {
                Some((base(Kind::Dir, 0o755, 2 + subdirs.get(ino).copied().unwrap_or(0), 0, Data::None, "directory"), "as a directory (mode 0755)".to_string()))
            }
            (Some(Kind::File), Some(len)) => Some((
                base(Kind::File, 0o644, names.max(1), len, Data::Staged, "staged file"),
                format!("as a staged file of {len} bytes from staging/{ino} (mode 0644; size from the staging file)"),
            )),
            (Some(Kind::File), None) if need_blob.len() == 1 && unclaimed.len() == 1 => {
                let (blob, slot, len, frame, stored) = unclaimed[0];
                Some((
                    base(Kind::File, 0o644, names.max(1), len, Data::Compressed { blob, slot, stored, frame }, "compressed file"),
                    format!("as a compressed file of {len} bytes, entry {slot} of blob {blob} (the one entry no inode claims; mode 0644)"),
                ))
            }
            _ => None,
        };
        match rebuilt {
            Some((i, how)) => out.push(problem(
                "inode-corrupt",
                format!("inode {ino}: its record does not decode ({why})"),
                p,
                &format!("rebuild it {how}; owner, times and mode are not recoverable"),
                vec![Fix::Put(keys::inode(*ino), enc(&i))],
            )),
            None => out.push(loss(problem(
                "inode-corrupt",
                format!("inode {ino}: its record does not decode ({why})"),
                p,
                "none: what it held cannot be found again; its names stay and read EIO",
                vec![],
            ))),
        }
    }
}

/// The kind of an inode as its directory entries say.
fn kind_of(s: &Snapshot, ino: u64) -> Option<Kind> {
    s.dirents.iter().find_map(|d| d.child.filter(|c| c.0 == ino).map(|c| c.1))
}
