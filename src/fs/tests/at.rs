//! `.coldvault/at/<TIME>/` (`at.rs`): views of the vault as it was, and what an open file of
//! one keeps when views come and go.

use super::*;
use crate::fs::at::CTL_AT;

fn view(fs: &Fs, name: &str) -> crate::meta::Inode {
    fs.lookup(CTL_AT, OsStr::new(name)).unwrap()
}

/// A file of a view opened before its view is dropped (more views made than are kept) reads
/// on to its end, and its view's numbers are never given to another view (review B2).
#[test]
fn an_open_file_of_a_dropped_view_reads_on() {
    let e = Env::new();
    let d = data(300_000, 5);
    upload_one(&e, "old.jpg", &d);
    flush_journal(&e);
    let fs = e.fs();
    let first = view(&fs, "2099-01-01T00:00");
    let file = fs.lookup(first.ino, OsStr::new("old.jpg")).unwrap();
    let (fh, _) = fs.open(file.ino, false, false, 0).unwrap();
    assert_eq!(fs.read(fh, 0, 1000).unwrap()[..], d[..1000]);
    let mut numbers = vec![first.ino];
    for m in 1..=super::super::at::MAX_VIEWS {
        numbers.push(view(&fs, &format!("2099-01-01T00:{m:02}")).ino);
    }
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), super::super::at::MAX_VIEWS + 1, "a view's number was reused");
    assert!(matches!(fs.getattr(first.ino), Err(FsError::NotFound)), "the first view is dropped");
    let mut out = fs.read(fh, 0, 1000).unwrap().to_vec();
    while out.len() < d.len() {
        let got = fs.read(fh, out.len() as u64, 128 * 1024).unwrap();
        assert!(!got.is_empty(), "the read stopped at {}", out.len());
        out.extend(got);
    }
    assert!(out == d, "what the open handle read differs from the version");
    fs.release(fh).unwrap();
    // Made again by name, it is a new view with new numbers.
    let again = view(&fs, "2099-01-01T00:00");
    assert!(again.ino != first.ino);
    assert_eq!(read_all_on(&fs, fs.lookup(again.ino, OsStr::new("old.jpg")).unwrap().ino), d);
}
