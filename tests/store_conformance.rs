//! The object-store contract (`coldvault::store::conformance`) checked against a real S3
//! server through `S3Store`, the code a mount uses. Needs a server: the e2e suite
//! (`tests/e2e/test_store_conformance.py`) starts s3s-fs and moto, makes a bucket on each and
//! runs this test with `--ignored` and
//!
//! * `COLDVAULT_CONFORMANCE_ENDPOINT`, `COLDVAULT_CONFORMANCE_BUCKET`: where;
//! * `COLDVAULT_CONFORMANCE_CAPS`: comma-separated `conditional`, `archive`, `list-multipart`,
//!   `no-such-upload`;
//! * `COLDVAULT_CONFORMANCE_RESTORE_SECONDS`: how long the server takes to restore.
//!
//! Without them it is ignored, and cargo reports it as ignored, not passed.

use coldvault::store::conformance::{self, Caps};
use coldvault::store::s3::{S3Settings, S3Store};
use std::time::Duration;

#[test]
#[ignore = "needs a real S3 server: run by tests/e2e/test_store_conformance.py"]
fn a_real_server_keeps_the_store_contract() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run through tests/e2e/test_store_conformance.py"));
    let endpoint = env("COLDVAULT_CONFORMANCE_ENDPOINT");
    let bucket = env("COLDVAULT_CONFORMANCE_BUCKET");
    let caps_list = env("COLDVAULT_CONFORMANCE_CAPS");
    let has = |c: &str| caps_list.split(',').any(|x| x.trim() == c);
    let restore_secs: f64 = std::env::var("COLDVAULT_CONFORMANCE_RESTORE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let caps = Caps {
        conditional_writes: has("conditional"),
        archive_tiers: has("archive"),
        restore_time: Duration::from_secs_f64(restore_secs),
        it_archive: None,
        lists_multipart: has("list-multipart"),
        no_such_upload: has("no-such-upload"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = rt.block_on(async {
        let settings = S3Settings { bucket, endpoint_url: Some(endpoint), region: Some("us-east-1".into()), path_style: true, object_lock: None };
        let store = S3Store::connect(&settings).await;
        conformance::run(&store, "conformance/", &caps).await
    });
    println!("{report}");
    assert!(report.failed.is_empty(), "{report}");
}
