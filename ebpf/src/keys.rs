//! Map keys and values laid out byte for byte as `bpf/capture.c` declares them.
//! They are byte arrays (which aya already treats as plain data) built by small
//! functions, so no `unsafe impl Pod` is needed.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Mirrors `MAX_BACKENDS` in capture.c.
pub const MAX_BACKENDS: usize = 32;

/// `struct orig_key { u64 netns; u32 src_ip (net order); u32 src_port (host order) }`.
pub type OrigKey = [u8; 16];

/// `struct dst4 { u32 ip (net order); u32 port (net order, low 16 bits) }`.
pub type Dst4 = [u8; 8];

/// `struct svc_key { u32 vip (net order); u32 port (host order) }`.
pub type SvcKey = [u8; 8];

/// `struct svc_backends { u32 count; u32 ip[32]; u32 port[32] }`.
pub type SvcBackends = [u8; 4 + 8 * MAX_BACKENDS];

/// The `orig_dst` key for an app socket in namespace `netns`.
pub fn orig_key(netns: u64, app: SocketAddrV4) -> OrigKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&netns.to_ne_bytes());
    k[8..12].copy_from_slice(&app.ip().octets());
    k[12..16].copy_from_slice(&u32::from(app.port()).to_ne_bytes());
    k
}

/// Reads a `dst4` value.
pub fn dst4_addr(v: &Dst4) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
    // The port's two network-order bytes sit first in the u32's memory.
    let port = u16::from_be_bytes([v[4], v[5]]);
    SocketAddrV4::new(ip, port)
}

/// The `services` key for a VIP.
pub fn svc_key(vip: SocketAddrV4) -> SvcKey {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&vip.ip().octets());
    k[4..].copy_from_slice(&u32::from(vip.port()).to_ne_bytes());
    k
}

/// The `services` value for a backend list; `None` when there are too many.
pub fn svc_backends(backends: &[SocketAddrV4]) -> Option<SvcBackends> {
    if backends.len() > MAX_BACKENDS {
        return None;
    }
    let mut v = [0u8; 4 + 8 * MAX_BACKENDS];
    v[..4].copy_from_slice(&(backends.len() as u32).to_ne_bytes());
    for (i, b) in backends.iter().enumerate() {
        let ip_at = 4 + 4 * i;
        v[ip_at..ip_at + 4].copy_from_slice(&b.ip().octets());
        let port_at = 4 + 4 * MAX_BACKENDS + 4 * i;
        v[port_at..port_at + 4].copy_from_slice(&u32::from(b.port()).to_ne_bytes());
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let k = orig_key(7, "10.0.0.1:4242".parse().unwrap());
        assert_eq!(&k[..8], &7u64.to_ne_bytes());
        assert_eq!(&k[8..12], &[10, 0, 0, 1]);
        assert_eq!(&k[12..], &4242u32.to_ne_bytes());
        let d: Dst4 = [10, 96, 0, 1, 0x1f, 0x90, 0, 0];
        assert_eq!(dst4_addr(&d), "10.96.0.1:8080".parse().unwrap());
        let b = svc_backends(&["10.0.0.2:80".parse().unwrap()]).unwrap();
        assert_eq!(&b[..4], &1u32.to_ne_bytes());
        assert_eq!(&b[4..8], &[10, 0, 0, 2]);
        assert_eq!(
            &b[4 + 4 * MAX_BACKENDS..8 + 4 * MAX_BACKENDS],
            &80u32.to_ne_bytes()
        );
        assert!(svc_backends(&["1.1.1.1:1".parse().unwrap(); 33]).is_none());
    }
}
