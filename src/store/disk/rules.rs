//! The fault rules of `TEZIPFS_FAULTS` (a testing tool, see docs/ADMIN.md "Fault injection"):
//! their syntax, and which rule fires on a disk call.
//!
//! One rule a line, `#` starts a comment:
//!
//! ```text
//! OP [kind=KIND] [path=GLOB] ACTION [after=N] [count=N] [prob=P]
//! OP      open | create | read | write | fsync | rename | unlink | any
//! KIND    blob | staging | model | tmp | dir | other | any          (default any)
//! GLOB    a pattern over the whole path, `*` matches any run of characters
//! ACTION  error=EIO|ENOSPC|EROFS|EDQUOT|ENOMEM|<errno number>        fail the call
//!         short [error=E]   a write stores only the first half of its bytes, then reports
//!                           success (a lying disk), or fails with E (a disk filling mid-write)
//!         delay=MS          the call waits MS milliseconds, then runs
//!         powercut [tear]   simulate a power loss before the call (needs TEZIPFS_POWERCUT)
//! after=N the rule skips its first N matching calls (default 0)
//! count=N the rule fires at most N times (default: every time)
//! prob=P  the rule fires on a matching call with probability P (default 1)
//! ```

use std::path::Path;

/// A disk call of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Open,
    Create,
    Read,
    Write,
    Fsync,
    Rename,
    Unlink,
}

/// What a file of the store is, from the directory it lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blob,
    Staging,
    Model,
    Tmp,
    /// A directory (its fsync).
    Dir,
    Other,
}

impl Kind {
    /// The kind of a file of the store, by the name of its directory.
    pub fn of_file(path: &Path) -> Kind {
        match path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
            Some("blobs") => Kind::Blob,
            Some("staging") => Kind::Staging,
            Some("models") => Kind::Model,
            Some("tmp") => Kind::Tmp,
            _ => Kind::Other,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Error(i32),
    /// Store half the bytes; then succeed (`None`) or fail with the errno.
    Short(Option<i32>),
    Delay(std::time::Duration),
    PowerCut {
        tear: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub line: usize,
    pub op: Option<Op>,
    pub kind: Option<Kind>,
    pub path: Option<String>,
    pub action: Action,
    pub after: u64,
    pub count: Option<u64>,
    pub prob: f64,
    /// Matching calls seen, and times fired (reset when the file is reread).
    pub seen: u64,
    pub fired: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("fault rules, line {line}: {why}")]
pub struct RuleError {
    pub line: usize,
    pub why: String,
}

fn errno_of(s: &str) -> Option<i32> {
    Some(match s {
        "EIO" => libc::EIO,
        "ENOSPC" => libc::ENOSPC,
        "EROFS" => libc::EROFS,
        "EDQUOT" => libc::EDQUOT,
        "ENOMEM" => libc::ENOMEM,
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        n => n.parse().ok().filter(|&n: &i32| n > 0)?,
    })
}

/// Parse a rules file. Any bad line refuses the whole file (a half-armed fault set would test
/// something other than what was asked).
pub fn parse(text: &str) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    for (k, raw) in text.lines().enumerate() {
        let line = k + 1;
        let err = |why: String| RuleError { line, why };
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let mut words = body.split_whitespace();
        let op = match words.next().unwrap_or("") {
            "open" => Some(Op::Open),
            "create" => Some(Op::Create),
            "read" => Some(Op::Read),
            "write" => Some(Op::Write),
            "fsync" => Some(Op::Fsync),
            "rename" => Some(Op::Rename),
            "unlink" => Some(Op::Unlink),
            "any" => None,
            other => return Err(err(format!("unknown operation {other:?} (open, create, read, write, fsync, rename, unlink or any)"))),
        };
        let mut rule = Rule { line, op, kind: None, path: None, action: Action::Error(0), after: 0, count: None, prob: 1.0, seen: 0, fired: 0 };
        let (mut error, mut short, mut delay, mut cut, mut tear) = (None, false, None, false, false);
        for w in words {
            let (key, value) = match w.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (w, None),
            };
            let num = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| err(format!("{key} needs a whole number, got {w:?}")));
            match key {
                "kind" => {
                    rule.kind = match value.unwrap_or("") {
                        "blob" => Some(Kind::Blob),
                        "staging" => Some(Kind::Staging),
                        "model" => Some(Kind::Model),
                        "tmp" => Some(Kind::Tmp),
                        "dir" => Some(Kind::Dir),
                        "other" => Some(Kind::Other),
                        "any" => None,
                        v => return Err(err(format!("unknown kind {v:?} (blob, staging, model, tmp, dir, other or any)"))),
                    }
                }
                "path" => rule.path = Some(value.filter(|v| !v.is_empty()).ok_or_else(|| err("path= needs a pattern".into()))?.to_string()),
                "error" => {
                    error = Some(
                        value
                            .and_then(errno_of)
                            .ok_or_else(|| err(format!("unknown error {w:?} (EIO, ENOSPC, EROFS, EDQUOT, ENOMEM, EPERM, EACCES or a number)")))?,
                    )
                }
                "short" if value.is_none() => short = true,
                "delay" => delay = Some(std::time::Duration::from_millis(num(value)?)),
                "powercut" if value.is_none() => cut = true,
                "tear" if value.is_none() => tear = true,
                "after" => rule.after = num(value)?,
                "count" => rule.count = Some(num(value)?),
                "prob" => {
                    rule.prob = value
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| err(format!("prob needs a number in 0..=1, got {w:?}")))?
                }
                _ => return Err(err(format!("unknown word {w:?}"))),
            }
        }
        rule.action = match (error, short, delay, cut) {
            (e, true, None, false) => {
                if rule.op.is_some_and(|o| o != Op::Write) {
                    return Err(err("short applies to write only".into()));
                }
                Action::Short(e)
            }
            (Some(e), false, None, false) => Action::Error(e),
            (None, false, Some(d), false) => Action::Delay(d),
            (None, false, None, true) => Action::PowerCut { tear },
            (None, false, None, false) => return Err(err("no action (error=E, short, delay=MS or powercut)".into())),
            _ => return Err(err("more than one action".into())),
        };
        if tear && !cut {
            return Err(err("tear goes with powercut".into()));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// `*` matches any run of characters (including `/`); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Rule {
    /// Whether the rule applies to this call (before `after`, `count` and `prob`).
    pub fn matches(&self, op: Op, kind: Kind, path: &Path) -> bool {
        self.op.is_none_or(|o| o == op) && self.kind.is_none_or(|k| k == kind) && self.path.as_deref().is_none_or(|g| path.to_str().is_some_and(|s| glob(g, s)))
    }

    /// Count a matching call; whether the rule fires on it. `coin` is a uniform draw in [0, 1).
    pub fn fire(&mut self, coin: f64) -> bool {
        self.seen += 1;
        if self.seen <= self.after || self.count.is_some_and(|c| self.fired >= c) || coin >= self.prob {
            return false;
        }
        self.fired += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action_and_refuses_bad_lines_by_number() {
        let r = parse(
            "# header\n\nwrite kind=blob error=ENOSPC count=1\nfsync kind=dir path=*/blobs delay=250 # slow\nwrite short after=2\nany powercut tear after=40\nread error=5 prob=0.5\n",
        )
        .unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!((r[0].op, r[0].kind, &r[0].action, r[0].count), (Some(Op::Write), Some(Kind::Blob), &Action::Error(libc::ENOSPC), Some(1)));
        assert_eq!((r[1].line, &r[1].action, r[1].path.as_deref()), (4, &Action::Delay(std::time::Duration::from_millis(250)), Some("*/blobs")));
        assert_eq!((&r[2].action, r[2].after), (&Action::Short(None), 2));
        assert_eq!((r[3].op, &r[3].action, r[3].after), (None, &Action::PowerCut { tear: true }, 40));
        assert_eq!((&r[4].action, r[4].prob), (&Action::Error(libc::EIO), 0.5));
        for (bad, line, why) in [
            ("write kind=blob", 1, "no action"),
            ("\nfrobnicate error=EIO", 2, "unknown operation"),
            ("write error=EWHAT", 1, "unknown error"),
            ("read short", 1, "write only"),
            ("write error=EIO delay=3", 1, "more than one"),
            ("write kind=disk error=EIO", 1, "unknown kind"),
            ("write error=EIO prob=2", 1, "prob"),
            ("write error=EIO after=x", 1, "whole number"),
            ("write error=EIO tear", 1, "tear goes with powercut"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.line, line, "{bad}: {e}");
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn after_count_and_matching() {
        let mut r = parse("write kind=blob path=*/blobs/7.tzb error=EIO after=1 count=2").unwrap().remove(0);
        let p = Path::new("/s/blobs/7.tzb");
        assert_eq!(Kind::of_file(p), Kind::Blob);
        assert!(r.matches(Op::Write, Kind::Blob, p));
        assert!(!r.matches(Op::Read, Kind::Blob, p));
        assert!(!r.matches(Op::Write, Kind::Blob, Path::new("/s/blobs/8.tzb")));
        let fired: Vec<bool> = (0..5).map(|_| r.fire(0.0)).collect();
        assert_eq!(fired, [false, true, true, false, false]);
        let mut half = parse("any error=EIO prob=0.5").unwrap().remove(0);
        assert!(half.fire(0.2) && !half.fire(0.7));
        assert!(glob("*", "") && glob("a*c", "abbbc") && glob("*/tmp/*", "/x/tmp/1.tzb") && !glob("a*c", "abd"));
        assert_eq!(Kind::of_file(Path::new("/s/staging/12")), Kind::Staging);
        assert_eq!(Kind::of_file(Path::new("/s/reserve")), Kind::Other);
    }
}
