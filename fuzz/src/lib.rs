//! hark's fuzz targets, shared by the AFL++ binaries (src/bin/) and by the corpus replay
//! test in hark's own suite (tests/prop_fuzz_corpus.rs includes `targets.rs` by path).
pub mod targets;
