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

/// A view's name for the second after now, and that second passed.
fn name_after_now() -> String {
    let next = (crate::clock::now_ms() / 1000 + 1) * 1000;
    while crate::clock::now_ms() <= next + 50 {
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::clock::fmt_ms(next).trim_end_matches(" UTC").replace(' ', "T")
}

/// View numbers start again at each mount: a restore made ready for one view's file says
/// nothing of the file another view gives that number after a remount, which still answers
/// EAGAIN and has its own restore requested (review B3; fails without both halves of the fix).
#[test]
fn a_restore_of_a_view_file_does_not_outlive_its_mount() {
    let mut e = Env::new();
    *e.store.restore_delay.lock().unwrap() = Duration::from_millis(300);
    let fs = e.fs();
    let raw = fs.mkdir(ROOT, OsStr::new("raw"), 0o755, 0, 0).unwrap();
    let b = e.write_file(raw.ino, "b.CR2", &data(200_000, 2));
    fs.seal_ready(true).unwrap();
    e.wait_state(b, State::Uploaded);
    flush_journal(&e);
    let only_b = name_after_now();
    let a = data(200_000, 1);
    let a_ino = e.write_file(raw.ino, "a.CR2", &a);
    fs.seal_ready(true).unwrap();
    e.wait_state(a_ino, State::Uploaded);
    flush_journal(&e);
    // Now: raw/a.CR2 is node 2 of the view, and is restored and read there.
    let both = view(&fs, "2099-01-01");
    let raw_v = fs.lookup(both.ino, OsStr::new("raw")).unwrap();
    let a_v = fs.lookup(raw_v.ino, OsStr::new("a.CR2")).unwrap();
    assert_eq!(fs.open(a_v.ino, false, false, 0).err().map(|e| e.errno()), Some(libc::EAGAIN));
    wait_for("the view's restore", || fs.open(a_v.ino, false, false, 0).map(|(fh, _)| fs.release(fh).unwrap()).is_ok());
    assert_eq!(read_all_on(&fs, a_v.ino), a);
    // Looked at again in an hour, as the restore task leaves a ready restore: the remount
    // comes before that.
    let mut rows = fs.restores().unwrap();
    assert_eq!(rows.len(), 1);
    rows[0].next_check_ms = crate::clock::now_ms() + 3_600_000;
    fs.put_restore(&rows[0]).unwrap();
    drop(fs);
    e.restart();
    let fs = e.fs();
    // After the remount, the first view made is one without a.CR2: b.CR2 takes its number.
    let earlier = view(&fs, &only_b);
    let raw_v = fs.lookup(earlier.ino, OsStr::new("raw")).unwrap();
    assert!(fs.lookup(raw_v.ino, OsStr::new("a.CR2")).is_err());
    let b_v = fs.lookup(raw_v.ino, OsStr::new("b.CR2")).unwrap();
    assert_eq!(b_v.ino, a_v.ino, "the test needs the number reused");
    assert_eq!(fs.open(b_v.ino, false, false, 0).err().map(|e| e.errno()), Some(libc::EAGAIN), "b.CR2 is archived and was never restored");
    wait_for("b's restore", || e.store.calls_of("RestoreObject") == 2);
}
