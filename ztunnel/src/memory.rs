//! What the process's memory is made of, for the admin `/memory` endpoint:
//! resident size split into file pages (binary, libc) and anonymous memory
//! (from `/proc/self/status`), and the allocator's view of the heap: bytes
//! handed out and bytes held free. Tells "live per-connection state" apart from
//! "freed but not returned to the kernel" without a heap profiler.

use serde::Serialize;

/// One sample.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MemoryReport {
    /// `VmRSS`, bytes.
    pub rss_bytes: u64,
    /// `RssAnon`: heap, stacks, anonymous maps.
    pub rss_anon_bytes: u64,
    /// `RssFile`: mapped file pages (the binary's text and data, libc).
    pub rss_file_bytes: u64,
    /// `VmHWM`: peak resident size.
    pub rss_peak_bytes: u64,
    /// Heap bytes allocated and not yet freed (glibc `mallinfo2().uordblks`
    /// plus its mmapped blocks); 0 where not known.
    pub heap_in_use_bytes: u64,
    /// Heap bytes freed but still held by the allocator (`fordblks`).
    pub heap_free_bytes: u64,
}

impl MemoryReport {
    /// Samples the running process.
    pub fn sample() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let mut r = Self::from_status(&status);
        r.add_heap();
        r
    }

    /// The `/proc/PID/status` part (kB figures, as the kernel writes them).
    pub fn from_status(status: &str) -> Self {
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        MemoryReport {
            rss_bytes: kib("VmRSS"),
            rss_anon_bytes: kib("RssAnon"),
            rss_file_bytes: kib("RssFile"),
            rss_peak_bytes: kib("VmHWM"),
            ..Default::default()
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    fn add_heap(&mut self) {
        // SAFETY: mallinfo2 only reads the allocator's counters (under its
        // own locks) and returns them by value.
        let info = unsafe { libc::mallinfo2() };
        self.heap_in_use_bytes = (info.uordblks + info.hblkhd) as u64;
        self.heap_free_bytes = info.fordblks as u64;
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn add_heap(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_figures_are_bytes() {
        let status = "Name:\tztunnel\nVmHWM:\t   24300 kB\nVmRSS:\t    9144 kB\n\
                      RssAnon:\t    1248 kB\nRssFile:\t    7784 kB\nRssShmem:\t       0 kB\n";
        let r = MemoryReport::from_status(status);
        assert_eq!(r.rss_bytes, 9144 * 1024);
        assert_eq!(r.rss_anon_bytes, 1248 * 1024);
        assert_eq!(r.rss_file_bytes, 7784 * 1024);
        assert_eq!(r.rss_peak_bytes, 24300 * 1024);
    }

    #[test]
    fn a_live_allocation_shows_in_the_heap_figure() {
        let block = vec![1u8; 4 << 20];
        let r = MemoryReport::sample();
        assert!(r.rss_bytes > 0 && r.rss_file_bytes > 0, "{r:?}");
        assert!(r.heap_in_use_bytes >= 4 << 20, "{r:?}");
        drop(block);
    }
}
