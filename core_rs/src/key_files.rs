//! Provider keys read from files (a mounted Kubernetes Secret, a file a Vault
//! agent renders): re-read when the file changes, looked at no more than
//! once a second so a call pays a system call at most once a second per
//! file. One table per process, which the app's path and the door both read,
//! so a rotated key reaches both within a second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a file's key is used before the file is looked at again.
pub const RECHECK: Duration = Duration::from_secs(1);

struct Entry {
    checked: Instant,
    /// The file's modification time when it was read; None: unreadable.
    modified: Option<SystemTime>,
    key: Option<String>,
}

#[derive(Default)]
pub struct KeyFiles {
    files: Mutex<HashMap<PathBuf, Entry>>,
}

impl KeyFiles {
    /// The key in `path` (its text, trimmed), or None when the file is gone,
    /// unreadable, not text or empty (the provider then answers 401).
    pub fn read(&self, path: &Path) -> Option<String> {
        let now = Instant::now();
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = files.get(path) {
            if now.duration_since(entry.checked) < RECHECK {
                return entry.key.clone();
            }
        }
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let unchanged = files
            .get(path)
            .is_some_and(|e| e.modified.is_some() && e.modified == modified);
        let key = if unchanged {
            files.get(path).and_then(|e| e.key.clone())
        } else {
            modified.and_then(|_| read_key(path))
        };
        let modified = key.as_ref().and(modified);
        let entry = Entry {
            checked: now,
            modified,
            key: key.clone(),
        };
        files.insert(path.to_owned(), entry);
        key
    }
}

fn read_key(path: &Path) -> Option<String> {
    let text = String::from_utf8(std::fs::read(path).ok()?).ok()?;
    let key = text.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// The process's table.
pub static KEY_FILES: LazyLock<KeyFiles> = LazyLock::new(KeyFiles::default);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_read_trimmed_and_read_again_only_after_a_second_and_a_change() {
        let path = std::env::temp_dir().join(format!("key-files-{}", std::process::id()));
        std::fs::write(&path, "first\n").unwrap();
        let files = KeyFiles::default();
        assert_eq!(files.read(&path).as_deref(), Some("first"));
        std::fs::write(&path, "second").unwrap();
        assert_eq!(
            files.read(&path).as_deref(),
            Some("first"),
            "within the second"
        );
        files.files.lock().unwrap().get_mut(&path).unwrap().checked -= RECHECK;
        // The same modification time to the nanosecond is possible on a coarse
        // clock: set it apart.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(files.read(&path).as_deref(), Some("second"));
        // Looked at again with the same modification time: not read again.
        std::fs::write(&path, "third").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(later).unwrap();
        files.files.lock().unwrap().get_mut(&path).unwrap().checked -= RECHECK;
        assert_eq!(files.read(&path).as_deref(), Some("second"));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        files.files.lock().unwrap().get_mut(&path).unwrap().checked -= RECHECK;
        assert_eq!(files.read(&path), None, "not text: no key");
        std::fs::write(&path, "fourth").unwrap();
        files.files.lock().unwrap().get_mut(&path).unwrap().checked -= RECHECK;
        assert_eq!(files.read(&path).as_deref(), Some("fourth"));
        std::fs::remove_file(&path).unwrap();
        files.files.lock().unwrap().get_mut(&path).unwrap().checked -= RECHECK;
        assert_eq!(files.read(&path), None, "gone: no key");
    }
}
