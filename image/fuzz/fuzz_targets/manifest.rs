//! Feed arbitrary bytes to the manifest decoder: it must return an error or
//! a manifest, never panic, and never allocate out of proportion to its
//! input (libFuzzer's -rss_limit_mb catches that).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = stasis_image::Manifest::decode(std::path::Path::new("fuzz"), data);
});
