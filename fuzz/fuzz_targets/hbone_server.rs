//! Fuzzes the HBONE server's request handling: arbitrary bytes as the client's
//! side of an established (post-TLS) HTTP/2 connection.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ambit_hbone::fuzzing::serve_bytes(data);
});
