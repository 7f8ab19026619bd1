//! Tests of folder read-ahead (`fs/ahead.rs`): what is asked for ahead of a copier, and what never is.

use super::*;

/// Folder read-ahead asks for the beginnings of the next files of a folder being copied, but
/// never of one in an archive tier: an Intelligent-Tiering object that S3 moved to its Archive
/// Access tier needs a restore as GLACIER does, and a GET of it only fails (and, through a
/// share, costs a request per file per copy attempt).
#[test]
fn folder_read_ahead_skips_intelligent_tiering_archived_files() {
    let e = Env::new();
    let fs = e.fs();
    let dir = fs.mkdir(ROOT, OsStr::new("album"), 0o755, 0, 0).unwrap();
    let inos: Vec<u64> = (0..4).map(|k| e.write_file(dir.ino, &format!("{k}.jpg"), &data(200_000, 60 + k as u8))).collect();
    fs.seal_ready(true).unwrap();
    for &i in &inos {
        e.wait_state(i, State::Uploaded);
    }
    // The third file goes to Intelligent-Tiering's Archive Access tier behind coldvault's back;
    // a read learns it (HeadObject after the failed GET), as in a real bucket.
    let key = fs.getattr(inos[2]).unwrap().object_key.unwrap();
    e.store.set_storage_class(&key, "INTELLIGENT_TIERING");
    e.store.set_archive_status(&key, Some("ARCHIVE_ACCESS"));
    let (fh, _) = fs.open(inos[2], false, false, 0).unwrap();
    assert_eq!(fs.read(fh, 0, 4096).unwrap_err().errno(), libc::EAGAIN);
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(inos[2]).unwrap().storage_class.unwrap().to_string(), "INTELLIGENT_TIERING/ARCHIVE_ACCESS");
    // A copier reads the folder in order: after the first two files, the rest is read ahead.
    for &i in &inos[..2] {
        let (fh, _) = fs.open(i, false, false, 0).unwrap();
        assert_eq!(fs.read(fh, 0, 4096).unwrap().len(), 4096);
        fs.release(fh).unwrap();
    }
    let started = fs.reads.started_ahead();
    assert!(started.contains(&inos[3]), "the file after it is read ahead: {started:?}");
    assert!(!started.contains(&inos[2]), "the archived file is not requested ahead");
}
