//! The daemon's control socket: one JSON request per connection, one JSON reply.
//!
//! The socket lives in `$XDG_RUNTIME_DIR/coldvault/`, else where no other user can make its
//! folder first (`runtime_dir`: `/run/coldvault/` for root, `/run/user/UID/coldvault/`, the
//! user's cache folder), mode 0700, named after a hash of the canonical mount point, so
//! `coldvault status MOUNTPOINT` finds the daemon that serves that mount point.
//!
//! Nobody else may answer in the daemon's place (a fake "everything is in S3" to `flush
//! --wait`) or give it orders: the folder must be a real folder owned by the user, closed to
//! others (`secure_dir`: one made beforehand by another user in /tmp is refused, not used), and
//! each side checks the other's uid on the connection (SO_PEERCRED): the user's own, or root's.

use crate::fs::{Fs, Status};
use crate::remote_meta::journal::JournalUploader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Seal everything now; with `wait`, reply only once it is all in S3 (or failed).
    Flush {
        wait: bool,
        /// Answer after this many seconds at most, naming what is still pending.
        #[serde(default)]
        timeout_secs: Option<u64>,
    },
    RetryFailed,
    Pid,
    /// Request restores for vault paths (files or folders).
    Restore {
        paths: Vec<String>,
        tier: Option<String>,
        days: Option<i32>,
        dry_run: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Flushed {
        uploaded_files: u64,
        failed_files: u64,
        still_open_for_write: u64,
        /// With `wait`: the files not uploaded because they are still open for writing (the
        /// first few of `still_open_for_write`).
        #[serde(default)]
        open_for_write: Vec<String>,
    },
    Retried {
        uploads: u64,
    },
    Pid {
        pid: u32,
    },
    Restore {
        files: u64,
        bytes: u64,
        cost_usd: f64,
        requested: u64,
    },
    Error {
        message: String,
    },
}

/// Where the control sockets of this user's mounts are: never a folder in /tmp, which another
/// local user could make first and so keep `status`, `flush --wait` and `unmount` from ever
/// reaching the daemon (they rightly refuse it).
pub fn runtime_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|d| !d.is_empty() && Path::new(d).is_absolute()).map(PathBuf::from);
    runtime_dir_for(my_uid(), var("XDG_RUNTIME_DIR"), var("XDG_CACHE_HOME"), var("HOME"))
}

fn runtime_dir_for(uid: u32, xdg_runtime: Option<PathBuf>, xdg_cache: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    if let Some(d) = xdg_runtime.filter(|d| d.is_dir()) {
        return d.join("coldvault");
    }
    // Root's /run, and the per-user folder logind makes there: nobody else can make them.
    if uid == 0 && Path::new("/run").is_dir() {
        return PathBuf::from("/run/coldvault");
    }
    let user_run = PathBuf::from(format!("/run/user/{uid}"));
    if user_run.is_dir() {
        return user_run.join("coldvault");
    }
    match xdg_cache.or_else(|| home.map(|h| h.join(".cache"))) {
        Some(c) => c.join("coldvault").join("run"),
        None => PathBuf::from(format!("/tmp/coldvault-{uid}")),
    }
}

fn my_uid() -> u32 {
    // SAFETY: getuid takes no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::getuid() }
}

/// Make sure `dir` is a folder of this user's that no one else can enter (creating it 0700 if
/// `create`); refuse, with the reason, a link, a folder of another user, or one others may
/// enter that cannot be closed.
pub fn secure_dir(dir: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let refuse =
        |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{}: {why}; not used for the control socket", dir.display()));
    // Opened without following a link, then checked and closed to others through the
    // descriptor: what is checked is what is changed.
    let d = match std::fs::File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            return Err(refuse("not a folder (a symbolic link or a file is there)".into()))
        }
        Err(e) => return Err(e),
    };
    let m = d.metadata()?;
    let uid = my_uid();
    if m.uid() != uid {
        return Err(refuse(format!("belongs to uid {}, not to you (uid {uid}): another user may have made it", m.uid())));
    }
    if m.mode() & 0o077 != 0 {
        // Ours: close it (only we, or root, can change it).
        d.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The uid at the other end of a connection is ours or root's.
fn peer_allowed(s: &tokio::net::UnixStream) -> Result<(), String> {
    let c = s.peer_cred().map_err(|e| format!("cannot tell who is at the other end of the control socket: {e}"))?;
    let uid = my_uid();
    if c.uid() == uid || c.uid() == 0 {
        Ok(())
    } else {
        Err(format!("the control socket is held by uid {} (pid {:?}), not by you (uid {uid}): not a coldvault daemon of yours", c.uid(), c.pid()))
    }
}

pub fn socket_path(mountpoint: &Path) -> std::io::Result<PathBuf> {
    let canon = std::fs::canonicalize(mountpoint)?;
    let h = hex::encode(Sha256::digest(canon.as_os_str().as_encoded_bytes()));
    Ok(runtime_dir().join(format!("{}.sock", &h[..20])))
}

/// Upload-rate tracking for the ETA in `status`.
pub struct Rate {
    started: std::time::Instant,
    start_uploaded_bytes: u64,
}

/// Answer requests on `sock` until `stop`; `journal` is the daemon's journal uploader (the one
/// its journal task uses), for `flush --wait`.
pub async fn serve(fs: Arc<Fs>, journal: Arc<JournalUploader>, sock: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) -> std::io::Result<()> {
    let dir = sock.parent().expect("socket has a parent").to_path_buf();
    if let Some(up) = dir.parent() {
        std::fs::create_dir_all(up)?;
    }
    secure_dir(&dir, true)?;
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)?;
    let rate = Arc::new(Rate { started: std::time::Instant::now(), start_uploaded_bytes: fs.status().map(|s| s.uploaded_bytes).unwrap_or(0) });
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                if let Err(why) = peer_allowed(&stream) {
                    tracing::warn!("control socket: {why}; connection refused");
                    continue;
                }
                let (fs, journal) = (fs.clone(), journal.clone());
                let rate = rate.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut line = String::new();
                    if BufReader::new(r).read_line(&mut line).await.is_err() {
                        return;
                    }
                    let reply = match serde_json::from_str::<Request>(&line) {
                        Ok(req) => handle(&fs, &journal, &rate, req).await,
                        Err(e) => Reply::Error { message: format!("bad request: {e}") },
                    };
                    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                    out.push(b'\n');
                    let _ = w.write_all(&out).await;
                });
            }
        }
    }
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

fn status_with_eta(fs: &Fs, rate: &Rate) -> Result<Status, String> {
    let mut s = fs.status().map_err(|e| e.to_string())?;
    let done = s.uploaded_bytes.saturating_sub(rate.start_uploaded_bytes) as f64;
    let secs = rate.started.elapsed().as_secs_f64();
    if s.pending_bytes > 0 && done > 0.0 && secs > 0.0 {
        s.eta_seconds = Some((s.pending_bytes as f64 / (done / secs)).ceil() as u64);
    }
    Ok(s)
}

async fn handle(fs: &Arc<Fs>, journal: &JournalUploader, rate: &Rate, req: Request) -> Reply {
    match req {
        Request::Pid => Reply::Pid { pid: std::process::id() },
        Request::Status => match status_with_eta(fs, rate) {
            Ok(s) => Reply::Status(s),
            Err(message) => Reply::Error { message },
        },
        Request::Restore { paths, tier, days, dry_run } => {
            let f = fs.clone();
            tokio::task::spawn_blocking(move || restore_paths(&f, &paths, tier, days, dry_run))
                .await
                .unwrap_or_else(|e| Reply::Error { message: e.to_string() })
        }
        Request::RetryFailed => match fs.retry_failed() {
            Ok(n) => Reply::Retried { uploads: n as u64 },
            Err(e) => Reply::Error { message: e.to_string() },
        },
        Request::Flush { wait, timeout_secs } => flush(fs, journal, wait, timeout_secs.map(Duration::from_secs)).await,
    }
}

/// How many paths a flush names when it stops short (open writers, files it still waits on).
const FLUSH_NAMES: usize = 20;

/// Seal everything now; with `wait`, answer once everything pending when it began is in S3 in
/// this version or a newer one, the journal included. It never waits on what cannot progress:
/// files deleted while open (orphans: nothing of them is uploaded), files held open for writing
/// (named in the reply: they upload once closed), files that cannot be sealed or were parked
/// as failed; and with `timeout` it answers then, naming what it still waits on. The journal
/// goes up through `journal`, the daemon's uploader (one flusher at a time).
pub async fn flush(fs: &Arc<Fs>, journal: &JournalUploader, wait: bool, timeout: Option<Duration>) -> Reply {
    let began = std::time::Instant::now();
    let mut targets = match fs.pending_inodes() {
        Ok(t) => t,
        Err(e) => return Reply::Error { message: e.to_string() },
    };
    loop {
        let f = fs.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || f.seal_ready(true)).await.unwrap_or(Ok(0)) {
            return Reply::Error { message: e.to_string() };
        }
        fs.upload_wakeup().notify_one();
        let looking = std::time::Instant::now();
        let f = fs.clone();
        let t = std::mem::take(&mut targets);
        let states = match tokio::task::spawn_blocking(move || f.flush_view(&t).map(|s| (t, s))).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Reply::Error { message: e.to_string() },
            Err(e) => return Reply::Error { message: e.to_string() },
        };
        let mut failed = 0u64;
        // Files that cannot be sealed now (a full staging disk): waiting would never end.
        let mut unsealable = Vec::new();
        let mut open_for_write = Vec::new();
        for (ino, view) in states.0.into_iter().zip(states.1) {
            use crate::meta::State;
            let Some(v) = view else { continue };
            if v.orphan {
                continue; // deleted while open: nothing of it will ever be uploaded
            }
            match v.state {
                State::Uploaded | State::Local => continue,
                State::Failed => failed += 1,
                State::Dirty if v.open_for_write => open_for_write.push(fs.path_of(ino)),
                State::Dirty if fs.seal_failure(ino).is_some() => {
                    unsealable.push(format!("  {}: {}", fs.path_of(ino), fs.seal_failure(ino).unwrap_or_default()));
                }
                _ => {}
            }
            targets.push(ino); // still pending: looked at again next round
        }
        let waiting = targets.len() as u64 - failed - unsealable.len() as u64 - open_for_write.len() as u64;
        if wait && waiting == 0 && !unsealable.is_empty() {
            return Reply::Error {
                message: format!(
                    "{} file(s) could not be sealed and stay staged (nothing is lost; they are retried):\n{}",
                    unsealable.len(),
                    unsealable.join("\n")
                ),
            };
        }
        if wait && waiting > 0 && timeout.is_some_and(|t| began.elapsed() >= t) {
            let f = fs.clone();
            let t = targets.clone();
            let names = tokio::task::spawn_blocking(move || f.describe_pending(&t, FLUSH_NAMES)).await.unwrap_or_default();
            return Reply::Error {
                message: format!(
                    "timed out after {} s with {waiting} file(s) not yet in S3 (they keep uploading in the background; `coldvault status` shows progress):\n{}",
                    began.elapsed().as_secs(),
                    names.join("\n")
                ),
            };
        }
        if !wait || waiting == 0 {
            if wait {
                // Renames, deletions and attribute changes are part of "everything".
                if let Err(e) = journal.flush().await {
                    return Reply::Error { message: format!("uploading the metadata journal failed: {e}") };
                }
            }
            let s = fs.status().unwrap_or_default();
            let still_open_for_write = if wait { open_for_write.len() as u64 } else { fs.open_writers() as u64 };
            open_for_write.truncate(FLUSH_NAMES);
            return Reply::Flushed { uploaded_files: s.uploaded_files, failed_files: failed, still_open_for_write, open_for_write };
        }
        // Look again in 200 ms, or later when looking took long (a large backlog). Only
        // the looking counts: sealing a batch of big files must not stretch the wait.
        tokio::time::sleep(Duration::from_millis(200).max(looking.elapsed() * 4)).await;
    }
}

fn restore_paths(fs: &Fs, paths: &[String], tier: Option<String>, days: Option<i32>, dry_run: bool) -> Reply {
    let mut files = std::collections::BTreeMap::new();
    for p in paths {
        let i = match fs.resolve(p) {
            Ok(i) => i,
            Err(e) => return Reply::Error { message: format!("{p}: {e}") },
        };
        match fs.archived_files_below(&i) {
            Ok(v) => files.extend(v.into_iter().map(|f| (f.ino, f))),
            Err(e) => return Reply::Error { message: e.to_string() },
        }
    }
    let tier = match tier.as_deref().map(|t| crate::vault::Tier::parse(t).ok_or(t)) {
        Some(Err(t)) => return Reply::Error { message: format!("unknown restore tier {t:?}; one of Expedited, Standard, Bulk") },
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let rc = &fs.cfg().restore;
    let (mut bytes, mut cost, mut requested) = (0u64, 0f64, 0u64);
    for f in files.values() {
        let class = f.storage_class.clone().unwrap_or_default();
        let t = tier.unwrap_or_else(|| crate::restore::default_tier(&class, rc.glacier_tier, rc.deep_archive_tier));
        bytes += f.size;
        cost += crate::restore::cost_estimate(&class, t, f.size, 1);
        if !dry_run {
            match fs.request_restore(f, &class, 0, Some(t), days, false) {
                Ok(true) => requested += 1,
                Ok(false) => {}
                Err(e) => return Reply::Error { message: e.to_string() },
            }
        }
    }
    Reply::Restore { files: files.len() as u64, bytes, cost_usd: cost, requested }
}

/// Why a request to the daemon (`call`) got no reply. `Display` is the message the CLI prints;
/// the I/O error underneath stays the source (shown after it, as `anyhow` contexts were).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The mount point cannot be resolved to name its socket.
    #[error("{} is not accessible", .mountpoint.display())]
    NotAccessible { mountpoint: PathBuf, source: std::io::Error },
    /// Nothing listens on the mount point's socket.
    #[error("no coldvault daemon is serving {} (is it mounted?)", .mountpoint.display())]
    NoDaemon { mountpoint: PathBuf, source: std::io::Error },
    /// The socket is held by someone else than the user (or root): `peer_allowed`'s reason.
    #[error("{0}")]
    NotOurs(String),
    #[error("the daemon closed the connection without answering")]
    NoAnswer,
    /// The socket's folder was refused, or the request or reply could not be sent or read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Send one request to the daemon serving `mountpoint`.
pub async fn call(mountpoint: &Path, req: &Request) -> Result<Reply, ControlError> {
    let sock = socket_path(mountpoint).map_err(|source| ControlError::NotAccessible { mountpoint: mountpoint.to_path_buf(), source })?;
    let dir = sock.parent().expect("socket has a parent");
    if dir.symlink_metadata().is_ok() {
        secure_dir(dir, false)?;
    }
    let stream =
        tokio::net::UnixStream::connect(&sock).await.map_err(|source| ControlError::NoDaemon { mountpoint: mountpoint.to_path_buf(), source })?;
    peer_allowed(&stream).map_err(ControlError::NotOurs)?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut resp = String::new();
    BufReader::new(r).read_line(&mut resp).await?;
    if resp.is_empty() {
        return Err(ControlError::NoAnswer);
    }
    Ok(serde_json::from_str(&resp)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The sockets' folder is one no other local user can make first: root's under /run, a
    /// user's under their XDG_RUNTIME_DIR or cache folder; /tmp only with neither.
    #[test]
    fn the_socket_folder_is_never_in_tmp_when_it_can_be_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(runtime_dir_for(0, None, None, p("/root")), PathBuf::from("/run/coldvault"));
        assert_eq!(runtime_dir_for(0, Some(t.path().into()), None, None), t.path().join("coldvault"));
        // An XDG_RUNTIME_DIR that does not exist is not used.
        assert_eq!(runtime_dir_for(0, p("/nonexistent/run"), None, None), PathBuf::from("/run/coldvault"));
        let nobody = 4_000_000_001;
        assert_eq!(runtime_dir_for(nobody, None, None, p("/home/ann")), PathBuf::from("/home/ann/.cache/coldvault/run"));
        assert_eq!(runtime_dir_for(nobody, None, p("/var/cache/ann"), p("/home/ann")), PathBuf::from("/var/cache/ann/coldvault/run"));
        assert_eq!(runtime_dir_for(nobody, None, None, None), PathBuf::from(format!("/tmp/coldvault-{nobody}")));
    }

    /// The socket's folder: made 0700; one of ours left open to others is closed; a link or a
    /// file in its place is refused, and what the link points to is left alone. (A folder of
    /// another user is refused too: tests/e2e/test_hardening.py, which runs as root.)
    #[test]
    fn the_socket_folder_is_the_users_own_and_closed() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("coldvault");
        secure_dir(&d, true).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        secure_dir(&d, false).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let e = secure_dir(&link, true).unwrap_err();
        assert!(e.to_string().contains("not a folder"), "{e}");
        assert_eq!(std::fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777, 0o755);
        let file = t.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(secure_dir(&file, true).is_err());
    }
}
