//! A bounded fuzz run of the waypoint's HTTP front inside the test suite:
//! protocol sniffing, HTTP/1.1 and HTTP/2 parsing, path normalization and
//! authorization fed valid requests, mutations of them and random bytes
//! (`waypoint::fuzzing::serve_bytes`). Any panic fails the test.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use waypoint::fuzzing::serve_bytes;
use waypoint::normalize::PathNormalization;

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: api:80\r\n{extra}content-length: 0\r\n\r\n").into_bytes()
}

/// Inputs that reach each stage, with what the waypoint must answer.
fn seeds() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        // Allowed, then no endpoint: 503 from routing.
        (get("/ok", ""), "HTTP/1.1 503"),
        (get("/admin", ""), "HTTP/1.1 403"),
        (get("/public/../admin", ""), "HTTP/1.1 403"),
        (get("/%61dmin/x", ""), "HTTP/1.1 403"),
        (get("/a/secret/b/c", ""), "HTTP/1.1 403"),
        (get("/ok", "x-a: verybad\r\n"), "HTTP/1.1 403"),
        (b"DELETE /ok HTTP/1.1\r\nhost: api:80\r\n\r\n".to_vec(), "HTTP/1.1 403"),
        (
            b"POST /ok HTTP/1.1\r\nhost: api:80\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            "HTTP/1.1 503",
        ),
        // Not HTTP: relayed as TCP only if policy allows; the ALLOW policy
        // has HTTP-only fields, so on TCP nothing is allowed.
        (b"\r\nGET /admin HTTP/1.1\r\n\r\n".to_vec(), ""),
        (b"BREW /pot HTTP/1.1\r\n\r\n".to_vec(), ""),
        (b"".to_vec(), ""),
        // The HTTP/2 preface and a SETTINGS frame: answered with SETTINGS.
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec(), "h2"),
    ]
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        let at = if v.is_empty() {
            0
        } else {
            rng.gen_range(0..v.len())
        };
        match rng.gen_range(0..4) {
            0 if !v.is_empty() => v[at] = rng.r#gen(),
            1 => v.insert(
                at,
                *b"/.%\\?#\r\n:".get(rng.gen_range(0..9)).unwrap_or(&b'/'),
            ),
            2 if !v.is_empty() => {
                v.remove(at);
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn bounded_fuzz_of_the_waypoint_http_front() {
    let budget = ambit_e2e::fuzz_budget(5);
    let seeds = seeds();
    for (input, want) in &seeds {
        let got = serve_bytes(input, PathNormalization::Base);
        let text = String::from_utf8_lossy(&got);
        let ok = match *want {
            "h2" => got.get(3) == Some(&4),
            "" => got.is_empty(),
            w => text.starts_with(w),
        };
        assert!(
            ok,
            "{:?} answered {text:?}, want {want:?}",
            String::from_utf8_lossy(input)
        );
    }
    let modes = [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ];
    let mut rng = StdRng::seed_from_u64(0x0057_A1D5);
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed() < budget {
        let input = if runs % 10 == 9 {
            (0..rng.gen_range(0..512)).map(|_| rng.r#gen()).collect()
        } else {
            let pick = rng.gen_range(0..seeds.len());
            mutate(&mut rng, &seeds[pick].0)
        };
        serve_bytes(&input, modes[rng.gen_range(0..modes.len())]);
        runs += 1;
    }
    assert!(runs > 50, "only {runs} inputs ran in {budget:?}");
    eprintln!("fuzzed {runs} inputs in {:?}", started.elapsed());
}
