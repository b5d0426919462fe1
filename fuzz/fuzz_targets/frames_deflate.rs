//! Fuzzes `cluster_transport::__fuzz::frames_deflate`: see its docs for what the input is.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster_transport::__fuzz::frames_deflate(data);
});
