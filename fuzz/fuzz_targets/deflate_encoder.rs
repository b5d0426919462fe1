//! Fuzzes `cluster_transport::__fuzz::deflate_encoder`: see its docs for what the input is.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cluster_transport::__fuzz::deflate_encoder(data);
});
