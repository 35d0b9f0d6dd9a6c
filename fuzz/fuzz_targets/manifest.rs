//! Arbitrary bytes as a manifest: decoding returns a manifest or an error, never panics, and a
//! decoded manifest re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv_storage::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::decode(data) {
        assert_eq!(Manifest::decode(&manifest.encode()).expect("re-encoded manifest decodes"), manifest);
    }
});
