//! Ambit's eBPF capture, loaded with aya 0.14 from C objects built by `build.rs`.
//!
//! One [`Capture`] per ztunnel (per node) owns the programs and maps:
//!
//! * `cgroup/connect4` and `sockops`, attached once at the cgroup-v2 root, redirect
//!   TCP connects of enrolled pods (selected by netns cookie) to ztunnel's
//!   `127.0.0.1:15001` inside the pod's namespace and record the original
//!   destination, which ztunnel reads back with [`Capture::original_dst`].
//!   Sockets marked [`ZTUNNEL_MARK`] are never redirected.
//! * The same connect4 load-balances Service VIPs for the cluster's pods that are
//!   *not* enrolled ([`Capture::balance_only`], [`Capture::set_service`]),
//!   standing in for kube-proxy. Namespaces never registered (the host, other
//!   clusters on the same machine) are not touched at all.
//! * `cgroup/connect6` refuses an enrolled pod's IPv6 TCP connects (except to
//!   `::1`) until v6 capture exists: fail closed, never a clear-text bypass.
//! * `sk_lookup`, attached to each enrolled pod's namespace, steers inbound
//!   plaintext to the pod's IP into ztunnel's in-pod 15006 socket.
//!
//! No iptables anywhere. The C source is `ebpf/bpf/capture.c`; `docs/capture.md`
//! explains the design.

mod cgroup;
mod keys;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::links::CgroupAttachMode;
use aya::programs::sk_lookup::SkLookupLinkId;
use aya::programs::{CgroupSockAddr, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};

pub use cgroup::{CgroupError, cgroup2_root};
use keys::{Dst4, OrigKey, SvcBackends, SvcKey, dst4_addr, orig_key, svc_backends, svc_key};

/// SO_MARK on ztunnel's own sockets; the capture programs never touch them.
pub const ZTUNNEL_MARK: u32 = 0x539;

/// `enrolled` map value: redirect to ztunnel.
const MODE_CAPTURE: u32 = 1;
/// `enrolled` map value: Service load balancing only.
const MODE_BALANCE: u32 = 2;

/// Most backends one Service VIP can have in the socket-level load balancer.
pub const MAX_BACKENDS: usize = keys::MAX_BACKENDS;

/// aya attaches with a BPF link on these kernels; links always coexist with other
/// programs on the cgroup and take no ALLOW_MULTI flag (the kernel refuses it).
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

static CAPTURE_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/capture.o"));

/// Why capture could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The BPF object did not load (verifier, missing privilege, ...).
    #[error("loading BPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("BPF program {name}: {source}")]
    Program {
        /// Which program.
        name: &'static str,
        /// What aya said.
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("BPF map {name}: {source}")]
    Map {
        /// Which map.
        name: &'static str,
        /// What aya said.
        source: aya::maps::MapError,
    },
    /// The object lacks an expected program or map (build mismatch).
    #[error("BPF object has no {0}")]
    Missing(&'static str),
    /// No cgroup v2 hierarchy was found or could be mounted.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A Service has more backends than the load balancer holds.
    #[error("service {vip} has {count} backends; at most {MAX_BACKENDS} are supported")]
    TooManyBackends {
        /// The VIP.
        vip: SocketAddrV4,
        /// How many were given.
        count: usize,
    },
    /// An I/O error on a file the capture needs.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> CaptureError {
    move |source| CaptureError::Program { name, source }
}

/// The program `name` of `bpf`, as program type `P`.
fn program<'a, P>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, CaptureError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    bpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map { name, source }
}

/// Treats "no such key" from a map delete as success (removal is idempotent).
fn absent_is_ok(res: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match res {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The loaded capture programs and their maps.
pub struct Capture {
    bpf: Ebpf,
    cgroup_root: PathBuf,
    inbound_links: HashMap<u64, SkLookupLinkId>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cgroup_root", &self.cgroup_root)
            .field("inbound_netns", &self.inbound_links.len())
            .finish()
    }
}

impl Capture {
    /// Loads the programs and attaches connect4 + sockops at the cgroup-v2 root
    /// (`cgroup_root`, or the detected/mounted one when `None`). Needs root.
    pub fn load(cgroup_root: Option<&Path>) -> Result<Self, CaptureError> {
        let cgroup_root = match cgroup_root {
            Some(p) => p.to_path_buf(),
            None => cgroup2_root()?,
        };
        // Our programs need no CO-RE relocations: skip parsing the kernel's BTF
        // (megabytes of memory in a long-lived process).
        let mut bpf = EbpfLoader::new().btf(None).load(CAPTURE_OBJ)?;
        let cgroup = std::fs::File::open(&cgroup_root).map_err(|source| CaptureError::Io {
            what: format!("opening cgroup {}", cgroup_root.display()),
            source,
        })?;

        let connect4: &mut CgroupSockAddr = program(&mut bpf, "ambit_connect4")?;
        connect4.load().map_err(prog_err("ambit_connect4"))?;
        connect4
            .attach(cgroup.as_fd(), LINK_MODE)
            .map_err(prog_err("ambit_connect4"))?;

        let connect6: &mut CgroupSockAddr = program(&mut bpf, "ambit_connect6")?;
        connect6.load().map_err(prog_err("ambit_connect6"))?;
        connect6
            .attach(cgroup.as_fd(), LINK_MODE)
            .map_err(prog_err("ambit_connect6"))?;

        let sockops: &mut SockOps = program(&mut bpf, "ambit_sockops")?;
        sockops.load().map_err(prog_err("ambit_sockops"))?;
        sockops
            .attach(cgroup.as_fd(), LINK_MODE)
            .map_err(prog_err("ambit_sockops"))?;

        let lookup: &mut SkLookup = program(&mut bpf, "ambit_sk_lookup")?;
        lookup.load().map_err(prog_err("ambit_sk_lookup"))?;

        Ok(Capture {
            bpf,
            cgroup_root,
            inbound_links: HashMap::new(),
        })
    }

    /// The cgroup the outbound programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, CaptureError> {
        let map = self.bpf.map_mut(name).ok_or(CaptureError::Missing(name))?;
        BpfHashMap::try_from(map).map_err(map_err(name))
    }

    /// Starts redirecting outbound TCP from the namespace with `netns_cookie`.
    pub fn enroll(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        self.hash_map::<u64, u32>("enrolled")?
            .insert(netns_cookie, MODE_CAPTURE, 0)
            .map_err(map_err("enrolled"))
    }

    /// Lets the namespace use Service VIPs through the socket-level load balancer
    /// without being captured (a pod outside the mesh). Namespaces never
    /// registered are left entirely alone.
    pub fn balance_only(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        self.hash_map::<u64, u32>("enrolled")?
            .insert(netns_cookie, MODE_BALANCE, 0)
            .map_err(map_err("enrolled"))
    }

    /// Stops redirecting outbound TCP from that namespace (and load balancing
    /// for it) and detaches its inbound steering. Releasing a namespace that is
    /// not registered is not an error.
    pub fn release(&mut self, netns_cookie: u64) -> Result<(), CaptureError> {
        let removed = self.hash_map::<u64, u32>("enrolled")?.remove(&netns_cookie);
        absent_is_ok(removed).map_err(map_err("enrolled"))?;
        if let Some(link) = self.inbound_links.remove(&netns_cookie) {
            let lookup: &mut SkLookup = program(&mut self.bpf, "ambit_sk_lookup")?;
            lookup.detach(link).map_err(prog_err("ambit_sk_lookup"))?;
        }
        Ok(())
    }

    /// Is this namespace enrolled (captured)?
    pub fn is_enrolled(&mut self, netns_cookie: u64) -> Result<bool, CaptureError> {
        Ok(self
            .hash_map::<u64, u32>("enrolled")?
            .get(&netns_cookie, 0)
            .is_ok_and(|m| m == MODE_CAPTURE))
    }

    /// The destination an app in `netns_cookie` connected to before connect4
    /// redirected it, looked up by the app socket's address as ztunnel's 15001
    /// listener sees it (the accepted socket's peer address).
    pub fn original_dst(
        &mut self,
        netns_cookie: u64,
        app: SocketAddrV4,
    ) -> Result<Option<SocketAddrV4>, CaptureError> {
        let key = orig_key(netns_cookie, app);
        match self.hash_map::<OrigKey, Dst4>("orig_dst")?.get(&key, 0) {
            Ok(v) => Ok(Some(dst4_addr(&v))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err("orig_dst")(e)),
        }
    }

    /// Steers inbound plaintext TCP to `pod_ip` (except on loopback and ztunnel's
    /// ports) into `listener` (ztunnel's 15006 socket in that pod's namespace).
    /// `netns` is that namespace; `netns_cookie` keys the link for [`release`](Self::release).
    pub fn attach_inbound<N: AsFd, L: AsRawFd>(
        &mut self,
        netns: N,
        netns_cookie: u64,
        pod_ip: Ipv4Addr,
        listener: &L,
    ) -> Result<(), CaptureError> {
        {
            let map = self
                .bpf
                .map_mut("inbound_plain")
                .ok_or(CaptureError::Missing("inbound_plain"))?;
            let mut sockets: SockHash<&mut MapData, [u8; 4]> =
                SockHash::try_from(map).map_err(map_err("inbound_plain"))?;
            sockets
                .insert(pod_ip.octets(), listener.as_raw_fd(), 0)
                .map_err(map_err("inbound_plain"))?;
        }
        if self.inbound_links.contains_key(&netns_cookie) {
            return Ok(());
        }
        let lookup: &mut SkLookup = program(&mut self.bpf, "ambit_sk_lookup")?;
        let link = lookup.attach(netns).map_err(prog_err("ambit_sk_lookup"))?;
        self.inbound_links.insert(netns_cookie, link);
        Ok(())
    }

    /// Sets the backends of a Service VIP for the socket-level load balancer
    /// (connections from pods that ztunnel does not capture).
    pub fn set_service(
        &mut self,
        vip: SocketAddrV4,
        backends: &[SocketAddrV4],
    ) -> Result<(), CaptureError> {
        let value = svc_backends(backends).ok_or(CaptureError::TooManyBackends {
            vip,
            count: backends.len(),
        })?;
        self.hash_map::<SvcKey, SvcBackends>("services")?
            .insert(svc_key(vip), value, 0)
            .map_err(map_err("services"))
    }

    /// Removes a Service VIP from the load balancer.
    pub fn remove_service(&mut self, vip: SocketAddrV4) -> Result<(), CaptureError> {
        let removed = self
            .hash_map::<SvcKey, SvcBackends>("services")?
            .remove(&svc_key(vip));
        absent_is_ok(removed).map_err(map_err("services"))
    }
}
