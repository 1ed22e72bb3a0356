//! `log_file`: one append-mode file shared by every event, swapped for a
//! freshly opened one on SIGHUP (logrotate moves the file, then signals).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

use crate::LogError;

/// The open log file. Each event is formatted into a buffer first and
/// written with one `write` while the lock is held, so lines never mix.
#[derive(Clone)]
pub(crate) struct SharedFile(Arc<Mutex<File>>);

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl SharedFile {
    pub(crate) fn open(path: &Path) -> Result<SharedFile, LogError> {
        let file = open(path).map_err(|source| LogError::File {
            path: path.to_owned(),
            source,
        })?;
        Ok(SharedFile(Arc::new(Mutex::new(file))))
    }

    /// Opens `path` anew and writes there from now on; on failure the
    /// current file stays.
    pub(crate) fn reopen(&self, path: &Path) -> std::io::Result<()> {
        let file = open(path)?;
        *self.lock() = file;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        // A panic while writing a log line leaves a usable file.
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// One event's access to the file.
pub(crate) struct Locked<'a>(MutexGuard<'a, File>);

impl Write for Locked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for SharedFile {
    type Writer = Locked<'a>;

    fn make_writer(&'a self) -> Locked<'a> {
        Locked(self.lock())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn appends_and_reopens_after_a_move() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        std::fs::write(&path, "old\n").unwrap();
        let file = SharedFile::open(&path).unwrap();
        file.make_writer().write_all(b"one\n").unwrap();
        let moved = dir.path().join("x.log.1");
        std::fs::rename(&path, &moved).unwrap();
        file.make_writer().write_all(b"two\n").unwrap();
        file.reopen(&path).unwrap();
        file.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "old\none\ntwo\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        // A path that cannot be opened keeps the current file.
        assert!(file.reopen(&dir.path().join("no/such.log")).is_err());
        file.make_writer().write_all(b"four\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\nfour\n");
        let err = SharedFile::open(&dir.path().join("no/such.log"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("cannot open [DEFAULT] log_file "),
            "{err}"
        );
    }
}
