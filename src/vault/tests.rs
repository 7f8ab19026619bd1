use super::*;

#[test]
fn classes_keep_their_stored_text() {
    for s in
        StorageClass::CHOOSABLE.iter().chain(&["INTELLIGENT_TIERING/ARCHIVE_ACCESS", "INTELLIGENT_TIERING/DEEP_ARCHIVE_ACCESS", "REDUCED_REDUNDANCY"])
    {
        assert_eq!(StorageClass::parse(s).as_str(), *s);
    }
    let it = StorageClass::from_head("INTELLIGENT_TIERING", Some("DEEP_ARCHIVE_ACCESS"));
    assert_eq!(it.as_str(), "INTELLIGENT_TIERING/DEEP_ARCHIVE_ACCESS");
    assert_eq!(it.wire(), "INTELLIGENT_TIERING");
    assert_eq!(StorageClass::from_head("STANDARD", Some("ARCHIVE_ACCESS")), StorageClass::Standard);
    assert_eq!(serde_json::to_string(&it).unwrap(), "\"INTELLIGENT_TIERING/DEEP_ARCHIVE_ACCESS\"");
    assert_eq!(serde_json::from_str::<StorageClass>("\"GLACIER\"").unwrap(), StorageClass::Glacier);
}

#[test]
fn one_answer_to_needs_restore() {
    let needs = |s: &str| StorageClass::parse(s).needs_restore();
    assert!(needs("DEEP_ARCHIVE") && needs("GLACIER"));
    assert!(
        needs("INTELLIGENT_TIERING/ARCHIVE_ACCESS") && needs("INTELLIGENT_TIERING/DEEP_ARCHIVE_ACCESS") && needs("INTELLIGENT_TIERING/SOMETHING_NEW")
    );
    assert!(!needs("GLACIER_IR") && !needs("STANDARD_IA") && !needs("INTELLIGENT_TIERING") && !needs("STANDARD") && !needs("ONEZONE_IA"));
}

#[test]
fn only_known_classes_can_be_chosen() {
    assert_eq!(StorageClass::choose("DEEP_ARCHIVE"), Ok(StorageClass::DeepArchive));
    let e = StorageClass::choose("deep_archive").unwrap_err();
    assert!(e.to_string().starts_with("unknown storage class \"deep_archive\"; one of STANDARD, "), "{e}");
    assert!(StorageClass::choose("INTELLIGENT_TIERING/ARCHIVE_ACCESS").is_err());
}

#[test]
fn specials_and_states_roundtrip() {
    for s in [Special::Fifo, Special::Sock, Special::Chr(0x0103), Special::Blk(7)] {
        assert_eq!(Special::parse(&s.to_string()), s);
        assert_eq!(Special::from_mode(s.type_bits() | 0o644, s.rdev()), Some(s));
    }
    assert_eq!(Special::parse("garbage"), Special::Fifo);
    for u in [UploadState::Queued, UploadState::Uploading, UploadState::Failed] {
        assert_eq!(UploadState::parse(u.as_str()), Some(u));
    }
    for t in Tier::ALL {
        assert_eq!(Tier::parse(t.as_str()), Some(t));
    }
    for r in [RState::Requesting, RState::InProgress, RState::Ready, RState::Expired, RState::Refused, RState::Failed] {
        assert_eq!(RState::parse(r.as_str()), Some(r));
    }
}
