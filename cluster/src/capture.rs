//! Watching a namespace's links (AF_PACKET), to show or assert what crosses the
//! wire: whether a payload went in clear, whether a TLS ClientHello offered h2.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_proxy_core::netns::Netns;

/// The ALPN extension of a ClientHello offering exactly `h2`.
pub const ALPN_H2_EXT: &[u8] = &[0x00, 0x10, 0x00, 0x05, 0x00, 0x03, 0x02, b'h', b'2'];

/// Records every frame on every interface of one namespace until finished.
#[derive(Debug)]
pub struct LinkCapture {
    bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkCapture {
    /// Starts capturing in `ns` (needs root).
    pub fn start(ns: &Netns) -> std::io::Result<LinkCapture> {
        let sock = ns.run(|| {
            socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(0x0300)), // htons(ETH_P_ALL)
            )
        })??;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let bytes: Arc<Mutex<Vec<u8>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (b, s) = (bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut sock = sock;
            let mut buf = vec![0u8; 65536];
            // Once asked to stop, keep reading until the queue is empty (a read
            // times out), so frames already captured are not lost.
            loop {
                match sock.read(&mut buf) {
                    Ok(n) => {
                        if let Ok(mut v) = b.lock() {
                            v.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(_) if s.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
        });
        Ok(LinkCapture {
            bytes,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns everything captured.
    pub fn finish(mut self) -> Vec<u8> {
        // Frames of the last exchange may still be on their way through the links.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bytes.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for LinkCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
