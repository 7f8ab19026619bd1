//! The locks of the filesystem core behind one name, so that its model-checked concurrency
//! tests can run the real code under `shuttle` (`cargo test --features shuttle --lib
//! shuttle_`), which explores the interleavings of these locks' acquisitions.
//!
//! With the `shuttle` feature the locks only work inside a shuttle test: build and run
//! everything else without it.

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Mutex, MutexGuard};
#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Mutex, MutexGuard};
