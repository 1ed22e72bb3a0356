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

fn open(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::File {
            path: path.to_owned(),
            source,
        })
}

impl SharedFile {
    pub(crate) fn open(path: &Path) -> Result<SharedFile, LogError> {
        Ok(SharedFile(Arc::new(Mutex::new(open(path)?))))
    }

    /// Opens `path` anew and writes there from now on; on failure the
    /// current file stays.
    pub(crate) fn reopen(&self, path: &Path) -> Result<(), std::io::Error> {
        let file = open(path).map_err(|e| match e {
            LogError::File { source, .. } => source,
            LogError::AlreadySet => std::io::Error::other("unexpected"),
        })?;
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
