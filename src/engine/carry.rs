//! The choice (predictor, entropy stage) of each directory's last window, handed to its next
//! window so that it is coded without a probe (`codec::window::Choice`): the frames a detector
//! writes into one directory look alike from window to window, and choosing is half of the
//! encoder's work. The codec makes the choice again every few windows, when a window codes
//! differently, and when the directory's policy, its model or its frames' geometry change; this
//! only remembers it, for a bounded number of directories (the least recently compressed are
//! forgotten: their next window chooses).

use crate::codec::window::Choice;
use std::num::NonZeroUsize;
use std::sync::Mutex;

/// Directories whose last choice is remembered.
const DIRS: usize = 4096;

pub struct Choices(Mutex<lru::LruCache<u64, Choice>>);

impl Default for Choices {
    fn default() -> Self {
        Choices(Mutex::new(lru::LruCache::new(NonZeroUsize::new(DIRS).expect("not zero"))))
    }
}

impl Choices {
    /// The choice of `dir`'s last window, if one is remembered. (Windows of one directory may
    /// be coded side by side: each takes the latest choice there is.)
    pub fn get(&self, dir: u64) -> Option<Choice> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&dir).cloned()
    }

    /// Remember `choice` as `dir`'s; `None` forgets it.
    pub fn put(&self, dir: u64, choice: Option<Choice>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match choice {
            Some(c) => {
                m.put(dir, c);
            }
            None => {
                m.pop(&dir);
            }
        }
    }
}
