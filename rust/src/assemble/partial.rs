//! The partial file an assembly writes into: a fresh temporary file beside the destination, or a
//! stable path the caller names so that a later run can resume from it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Read-backs go through a buffer of at most this many bytes.
const READ_PIECE: u64 = 1 << 20;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(super) struct PartialFile {
    path: PathBuf,
    file: File,
}

impl PartialFile {
    /// A new, uniquely named temporary file beside `destination`.
    pub(super) fn create_temporary(destination: &Path) -> Result<Self> {
        let name = destination.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "destination {} must name a file",
                destination.display()
            ))
        })?;
        let unique = format!(
            ".{}.meshpipe-{}-{}.part",
            name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = destination.with_file_name(unique);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        Ok(PartialFile { path, file })
    }

    /// The partial file at `path`, created if absent and never truncated, locked against a
    /// second assembler (in this or another process) while this one is alive. It must be on
    /// the destination's filesystem, so that `finish` can rename it into place.
    pub(super) fn open_stable(path: &Path, destination: &Path) -> Result<Self> {
        if path == destination {
            return Err(Error::InvalidArgument(format!(
                "partial_path {} is the destination itself; name a separate file beside it",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(format!("opening the partial file {}", path.display()), e))?;
        // SAFETY: flock on a descriptor we own; it only takes an advisory lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            let context = if error.kind() == io::ErrorKind::WouldBlock {
                format!(
                    "the partial file {} is in use by another assembler; wait for it to finish \
                     or stop it before resuming",
                    path.display()
                )
            } else {
                format!("locking the partial file {}", path.display())
            };
            return Err(Error::io(context, error));
        }
        let partial = PartialFile {
            path: path.to_path_buf(),
            file,
        };
        let here = partial.metadata()?.dev();
        let there = std::fs::metadata(parent_of(destination))
            .map_err(|e| {
                Error::io(
                    format!("reading the folder of {}", destination.display()),
                    e,
                )
            })?
            .dev();
        if here != there && partial.is_regular() {
            return Err(Error::InvalidArgument(format!(
                "partial_path {} is on another filesystem than the destination {}; the finished \
                 file is renamed into place, so put the partial file beside the destination",
                path.display(),
                destination.display()
            )));
        }
        // The partial file's name must survive a crash as well as its data.
        sync_folder(parent_of(path));
        Ok(partial)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn metadata(&self) -> Result<std::fs::Metadata> {
        self.file
            .metadata()
            .map_err(|e| Error::io(format!("reading metadata of {}", self.path.display()), e))
    }

    fn is_regular(&self) -> bool {
        self.file.metadata().is_ok_and(|m| m.is_file())
    }

    pub(super) fn len(&self) -> Result<u64> {
        Ok(self.metadata()?.len())
    }

    /// Extend (sparse: reserves nothing, but lets chunks land at any offset) or cut the file.
    pub(super) fn set_len(&self, size: u64) -> Result<()> {
        self.file
            .set_len(size)
            .map_err(|e| Error::io(format!("sizing {}", self.path.display()), e))
    }

    pub(super) fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }

    /// Hand `length` bytes from `offset` to `each`, in pieces of at most 1 MiB. A file shorter
    /// than that gives an error of kind `UnexpectedEof`.
    pub(super) fn read_range(
        &self,
        offset: u64,
        length: u64,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut buffer = vec![0u8; length.min(READ_PIECE) as usize];
        let mut done = 0u64;
        while done < length {
            let n = (length - done).min(READ_PIECE) as usize;
            self.file
                .read_exact_at(&mut buffer[..n], offset + done)
                .map_err(|e| Error::io(format!("reading back {}", self.path.display()), e))?;
            each(&buffer[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Make the data written so far durable (fdatasync).
    pub(super) fn sync_data(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }

    pub(super) fn sync_all(&self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io(format!("syncing {}", self.path.display()), e))
    }

    /// The assembly is over: let another assembler open this partial file (a later resume in
    /// this process, while this one is still referenced).
    pub(super) fn unlock(&self) {
        // SAFETY: flock on a descriptor we own; it only releases an advisory lock.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }

    /// Delete the file, if it is a regular file (a partial path may name a device).
    pub(super) fn remove(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_file()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether an I/O error means the file ended before the range asked for.
pub(super) fn is_short_file(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof)
}

pub(super) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// fsync a folder so that a name created or renamed in it is durable; best effort.
pub(super) fn sync_folder(folder: &Path) {
    if let Ok(dir) = File::open(folder) {
        let _ = dir.sync_all();
    }
}
