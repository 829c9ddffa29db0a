//! Blobs on SQLite: files in the data directory, one per blob, beside the database.
//!
//! `<data_dir>/blobs/<workspace key>/<first two hex digits>/<hash>.<media>`, where the
//! workspace key is the first 32 hex digits of the SHA-256 of the workspace's name (a
//! name never becomes a path component) and `<media>` is `json`, `txt` or `bin`.
//! Nothing of it is in the database: a file's name is its key and media, and its
//! modification time is its last use (what pruning reads). One process owns a data
//! directory, so the node's clock is the store's here as it is for the rest of SQLite.
//!
//! - **Atomic writes**: a put writes a temporary file in the blob's own directory, syncs
//!   it, renames it into place and syncs the directory. A crash leaves the blob whole or
//!   absent (and maybe a temporary file, which the next prune of that directory removes).
//! - **Locks**: each two-hex-digit directory is a lock (`flock` on the directory), shared
//!   for a read and exclusive for a put, a delete or a prune, so a delete never tears a
//!   read and a read never sees half a put. A lock is waited for only until the
//!   operation's bound, polled, so a blocked operation never outlives its caller's
//!   timeout; anyone holding the lock (another process, a test) makes the store slow.
//! - **Reads are bounded**: a file is read through a cap of [`MAX_BLOB_BYTES_CEILING`].
//!
//! Blocking file work runs on Tokio's blocking threads.

use crate::StoreError;
use crate::blobs::{BlobBackend, BlobError, MAX_BLOB_BYTES_CEILING, Media, TOUCH_AFTER, hash_of, valid_hash};
use async_trait::async_trait;
use std::fs::{self, File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The blob files of one data directory.
pub(crate) struct FileBlobs {
    root: PathBuf,
}

/// The directory (and lock) that holds the blob `hash` of `workspace` under `data_dir`:
/// for tests that make the store slow by holding its lock.
#[doc(hidden)]
pub fn blob_dir(data_dir: &Path, workspace: &str, hash: &str) -> PathBuf {
    let ws = hash_of(workspace.as_bytes());
    data_dir.join("blobs").join(&ws[..32]).join(&hash[..2])
}

fn ext(media: Media) -> &'static str {
    match media {
        Media::Json => "json",
        Media::Text => "txt",
        Media::Bytes => "bin",
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BlobError {
    BlobError::Store(StoreError::Database(format!("cannot {what} {}: {e}", path.display())))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Takes the directory's lock, shared or exclusive, waiting until `until` at most.
fn lock(dir: &Path, exclusive: bool, until: Instant, wait: Duration) -> Result<File, BlobError> {
    let f = File::open(dir).map_err(|e| io("open", dir, e))?;
    let mut pause = Duration::from_millis(1);
    loop {
        let tried = if exclusive { f.try_lock() } else { f.try_lock_shared() };
        match tried {
            Ok(()) => return Ok(f),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(io("lock", dir, e)),
        }
        let now = Instant::now();
        if now >= until {
            return Err(BlobError::TimedOut(ms(wait)));
        }
        std::thread::sleep(pause.min(until - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The blob's file and media in `dir`, if there is one.
fn find(dir: &Path, hash: &str) -> Option<(PathBuf, Media)> {
    Media::ALL.into_iter().map(|m| (dir.join(format!("{hash}.{}", ext(m))), m)).find(|(p, _)| p.is_file())
}

/// Marks a file used now, unless it was within [`TOUCH_AFTER`].
fn touch(path: &Path, force: bool) {
    let stale = fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= TOUCH_AFTER)
        .unwrap_or(true);
    if (force || stale)
        && let Err(e) = File::options().append(true).open(path).and_then(|f| f.set_modified(SystemTime::now()))
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot mark a blob used");
    }
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", dir, e))
}

impl FileBlobs {
    pub(crate) fn new(data_dir: &Path) -> Self {
        FileBlobs { root: data_dir.join("blobs") }
    }

    fn dir(&self, workspace: &str, hash: &str) -> PathBuf {
        debug_assert!(valid_hash(hash));
        blob_dir(self.root.parent().unwrap_or(Path::new(".")), workspace, hash)
    }

    fn put_now(
        dir: &Path,
        hash: &str,
        media: Media,
        data: &[u8],
        until: Instant,
        wait: Duration,
    ) -> Result<(), BlobError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
            // The new directories' entries must survive a crash with the blob.
            for d in dir.ancestors().skip(1).take(3) {
                sync_dir(d)?;
            }
        }
        let _lock = lock(dir, true, until, wait)?;
        if let Some((path, _)) = find(dir, hash) {
            touch(&path, true);
            return Ok(());
        }
        let tmp = dir.join(format!(".{hash}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = File::create_new(&tmp).and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", &tmp, e));
        }
        // Past its bound, a put stores nothing: its caller has given up on it.
        if Instant::now() >= until {
            let _ = fs::remove_file(&tmp);
            return Err(BlobError::TimedOut(ms(wait)));
        }
        let path = dir.join(format!("{hash}.{}", ext(media)));
        fs::rename(&tmp, &path).map_err(|e| io("rename", &tmp, e))?;
        sync_dir(dir)
    }

    fn get_now(dir: &Path, hash: &str, until: Instant, wait: Duration) -> Result<Option<(Media, Vec<u8>)>, BlobError> {
        if !dir.is_dir() {
            return Ok(None);
        }
        let _lock = lock(dir, false, until, wait)?;
        let Some((path, media)) = find(dir, hash) else { return Ok(None) };
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|f| f.take(MAX_BLOB_BYTES_CEILING + 1).read_to_end(&mut data))
            .map_err(|e| io("read", &path, e))?;
        touch(&path, false);
        Ok(Some((media, data)))
    }

    fn delete_now(dir: &Path, hash: &str, until: Instant, wait: Duration) -> Result<bool, BlobError> {
        if !dir.is_dir() {
            return Ok(false);
        }
        let _lock = lock(dir, true, until, wait)?;
        let Some((path, _)) = find(dir, hash) else { return Ok(false) };
        fs::remove_file(&path).map_err(|e| io("delete", &path, e))?;
        sync_dir(dir)?;
        Ok(true)
    }

    /// Removes files unused since `before` (and leftover temporary files) from each blob
    /// directory whose lock is free now (a busy one waits for the next prune).
    fn prune_now(root: &Path, before: SystemTime, limit: usize) -> Result<usize, StoreError> {
        let mut removed = 0;
        let list = |p: &Path| -> Vec<PathBuf> {
            fs::read_dir(p).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
        };
        for ws in list(root) {
            for dir in list(&ws) {
                let Ok(_lock) = lock(&dir, true, Instant::now(), Duration::ZERO) else { continue };
                let mut changed = false;
                for file in list(&dir) {
                    let leftover = file.extension().is_some_and(|e| e == "tmp");
                    let old = fs::metadata(&file).and_then(|m| m.modified()).is_ok_and(|t| t < before);
                    if (leftover || old) && fs::remove_file(&file).is_ok() {
                        changed = true;
                        removed += usize::from(!leftover);
                        if removed >= limit {
                            let _ = sync_dir(&dir);
                            return Ok(removed);
                        }
                    }
                }
                if changed {
                    let _ = sync_dir(&dir);
                }
            }
        }
        Ok(removed)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Store(StoreError::Unavailable(format!("blob task failed: {e}"))))?
}

#[async_trait]
impl BlobBackend for FileBlobs {
    async fn put(
        &self,
        workspace: &str,
        hash: &str,
        media: Media,
        data: Vec<u8>,
        until: Instant,
    ) -> Result<(), BlobError> {
        let (dir, hash, wait) = (self.dir(workspace, hash), hash.to_string(), until - Instant::now());
        blocking(move || FileBlobs::put_now(&dir, &hash, media, &data, until, wait)).await
    }

    async fn get(&self, workspace: &str, hash: &str, until: Instant) -> Result<Option<(Media, Vec<u8>)>, BlobError> {
        let (dir, hash, wait) = (self.dir(workspace, hash), hash.to_string(), until - Instant::now());
        blocking(move || FileBlobs::get_now(&dir, &hash, until, wait)).await
    }

    async fn delete(&self, workspace: &str, hash: &str, until: Instant) -> Result<bool, BlobError> {
        let (dir, hash, wait) = (self.dir(workspace, hash), hash.to_string(), until - Instant::now());
        blocking(move || FileBlobs::delete_now(&dir, &hash, until, wait)).await
    }

    async fn prune(&self, unused_for_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let root = self.root.clone();
        let before =
            SystemTime::now().checked_sub(Duration::from_millis(unused_for_ms)).unwrap_or(SystemTime::UNIX_EPOCH);
        tokio::task::spawn_blocking(move || FileBlobs::prune_now(&root, before, limit))
            .await
            .map_err(|e| StoreError::Unavailable(format!("blob task failed: {e}")))?
    }
}
