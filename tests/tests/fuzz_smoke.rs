//! A bounded fuzz run inside the test suite: the server's HTTP/2 + CONNECT
//! handling is fed valid client streams, mutations of them and random bytes.
//! Any panic fails the test. The open-ended run is `fuzz/run.sh` (cargo fuzz).

use std::time::Instant;

use ambit_e2e::wire::{self, frame};
use ambit_hbone::fuzzing::serve_bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Client byte streams that reach deep into the server: a tunnel with data, a
/// refused port, a GET, a bad authority, a reset stream, many streams.
fn seeds() -> Vec<Vec<u8>> {
    let start = |extra: &[Vec<u8>]| {
        let mut out = wire::H2_PREFACE.to_vec();
        out.extend(wire::encode_frame(
            frame::SETTINGS,
            0,
            0,
            &[0, 4, 0, 0x40, 0, 0],
        ));
        for e in extra {
            out.extend_from_slice(e);
        }
        out
    };
    let headers = |sid: u32, h: &[(&str, &str)]| {
        wire::encode_frame(frame::HEADERS, 0x4, sid, &wire::encode_headers(h))
    };
    let connect =
        |sid: u32, auth: &str| headers(sid, &[(":method", "CONNECT"), (":authority", auth)]);
    vec![
        start(&[
            connect(1, "127.0.0.1:8080"),
            wire::encode_frame(frame::DATA, 0, 1, b"hello"),
            wire::encode_frame(frame::DATA, 1, 1, b""),
        ]),
        start(&[connect(1, "127.0.0.1:8081")]),
        start(&[headers(
            1,
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
                (":authority", "a:1"),
            ],
        )]),
        start(&[connect(1, "bad_host:80")]),
        start(&[
            connect(1, "127.0.0.1:8080"),
            wire::encode_frame(frame::RST_STREAM, 0, 1, &8u32.to_be_bytes()),
            wire::encode_frame(frame::PING, 0, 0, &[1; 8]),
        ]),
        start(
            &(0..20)
                .map(|i| connect(2 * i + 1, "echo.ns.svc.cluster.local:80"))
                .collect::<Vec<_>>(),
        ),
        start(&[
            connect(1, "[::1]:8080"),
            wire::encode_frame(frame::WINDOW_UPDATE, 0, 1, &1000u32.to_be_bytes()),
            wire::encode_frame(frame::GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]),
        ]),
        // h2 itself refuses an authority that is not a URI authority.
        start(&[connect(1, "not an authority")]),
    ]
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..8) {
        match rng.gen_range(0..5) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.r#gen();
            }
            2 if !v.is_empty() => v.truncate(rng.gen_range(0..v.len())),
            3 => {
                let i = rng.gen_range(0..=v.len());
                let junk: Vec<u8> = (0..rng.gen_range(1..32)).map(|_| rng.r#gen()).collect();
                v.splice(i..i, junk);
            }
            _ if v.len() > 2 => {
                // Duplicate a slice (repeated frames, bogus lengths).
                let a = rng.gen_range(0..v.len() - 1);
                let b = rng.gen_range(a + 1..v.len());
                let piece = v[a..b].to_vec();
                v.extend(piece);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn bounded_fuzz_of_server_request_handling() {
    let budget = ambit_e2e::fuzz_budget(8);
    let seeds = seeds();
    let reached: Vec<_> = seeds.iter().map(|s| serve_bytes(s)).collect();
    // The seeds really get through HTTP/2 to the CONNECT handling.
    assert_eq!(
        reached[0].streams_established, 1,
        "tunnel seed: {:?}",
        reached[0]
    );
    assert_eq!(
        reached[1].streams_refused, 1,
        "refused-port seed: {:?}",
        reached[1]
    );
    assert_eq!(
        reached[3].streams_refused, 1,
        "bad-authority seed: {:?}",
        reached[3]
    );
    assert_eq!(
        reached[5].streams_received, 20,
        "many-streams seed: {:?}",
        reached[5]
    );
    let mut rng = StdRng::seed_from_u64(0x000A_3B17);
    let started = Instant::now();
    let mut runs = 0u32;
    while started.elapsed() < budget {
        let input = if runs % 10 == 9 {
            (0..rng.gen_range(0..512)).map(|_| rng.r#gen()).collect()
        } else {
            let seed = &seeds[rng.gen_range(0..seeds.len())];
            mutate(&mut rng, seed)
        };
        serve_bytes(&input);
        runs += 1;
    }
    assert!(runs > 100, "only {runs} inputs ran in {budget:?}");
    eprintln!("fuzzed {runs} inputs in {:?}", started.elapsed());
}

/// Writes the seeds to `fuzz/seeds/` for `fuzz/run.sh`. Run by hand:
/// `cargo test -p ambit-e2e --test fuzz_smoke -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    std::fs::create_dir_all(&dir).expect("seeds dir");
    for (i, s) in seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).expect("write seed");
    }
}
