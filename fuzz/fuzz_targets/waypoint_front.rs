//! Fuzzes the waypoint's HTTP front: arbitrary bytes as a tunnelled client
//! connection (sniffing, HTTP/1.1 and HTTP/2 parsing, path normalization,
//! authorization), under each path normalization mode.
#![no_main]

use waypoint::normalize::PathNormalization;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let mode = match mode % 4 {
        0 => PathNormalization::None,
        1 => PathNormalization::Base,
        2 => PathNormalization::MergeSlashes,
        _ => PathNormalization::DecodeAndMergeSlashes,
    };
    waypoint::fuzzing::serve_bytes(rest, mode);
});
