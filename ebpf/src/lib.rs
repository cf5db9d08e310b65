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
mod link_update;
mod load;
pub mod loader;
mod map_copy;
pub mod pins;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, SockHash};
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::sk_lookup::SkLookupLinkId;
use aya::programs::{ProgramInfo, SkLookup};

pub use cgroup::{CgroupError, cgroup2_root};
use keys::{Dst4, OrigKey, SvcBackends, SvcKey, dst4_addr, orig_key, svc_backends, svc_key};
use pins::PinDir;

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
    /// The embedded BPF object could not be parsed (build problem).
    #[error("parsing the BPF object: {0}")]
    Object(String),
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
    /// bpffs or the pin directory could not be prepared.
    #[error(transparent)]
    PinDir(#[from] pins::PinError),
    /// Pinning, or picking up a pinned, object failed.
    #[error("pinned BPF object {path}: {reason}")]
    Pinning {
        /// The pin path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The short-lived loader process failed.
    #[error("eBPF loader {exe}: {detail}")]
    Loader {
        /// The executable run as loader.
        exe: PathBuf,
        /// Its exit status and error output, or why it could not run.
        detail: String,
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

/// How an enrolled namespace's sk_lookup program is attached.
#[derive(Debug)]
enum InboundLink {
    /// Owned by the program: detached when the capture is dropped.
    Owned(SkLookupLinkId),
    /// Pinned in bpffs: outlives this process.
    Pinned(PinnedLink),
}

/// One namespace whose inbound plaintext is steered.
#[derive(Debug)]
struct Inbound {
    link: InboundLink,
    pod_ip: Ipv4Addr,
}

/// Every map in `capture.c`, pinned by these names.
const MAPS: [&str; 9] = [
    "settings",
    "splice",
    "splice_mode",
    "enrolled",
    "pending",
    "orig_dst",
    "services",
    "inbound_pods",
    "inbound_plain",
];

/// The inbound steering program, attached per enrolled pod namespace.
const SK_LOOKUP: &str = "ambit_sk_lookup";

/// The cgroup-root programs, pinned by these link names.
const CGROUP_PROGRAMS: [(&str, &str); 3] = [
    ("ambit_connect4", "connect4"),
    ("ambit_connect6", "connect6"),
    ("ambit_sockops", "sockops"),
];

/// Programs pinned under `progs/` by a pinned load: the cgroup programs and
/// sk_lookup.
fn pinned_programs() -> impl Iterator<Item = &'static str> {
    CGROUP_PROGRAMS
        .iter()
        .map(|(prog, _)| *prog)
        .chain([SK_LOOKUP])
}

/// Where the capture's programs live.
enum Programs {
    /// Loaded by this process, nothing pinned: the object's programs own the
    /// cgroup links, so dropping it detaches everything.
    Owned(Ebpf),
    /// Opened from pins; sk_lookup is attached to new namespaces from here.
    Pinned(Box<SkLookup>),
}

/// The loaded capture programs and their maps.
pub struct Capture {
    programs: Programs,
    maps: HashMap<&'static str, Map>,
    cgroup_root: PathBuf,
    pins: Option<PinDir>,
    /// Held open for the capture's life; with pins they stay attached anyway.
    cgroup_links: Vec<PinnedLink>,
    inbound: HashMap<u64, Inbound>,
    reused: bool,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cgroup_root", &self.cgroup_root)
            .field("pins", &self.pins.as_ref().map(PinDir::root))
            .field("inbound_netns", &self.inbound.len())
            .finish()
    }
}

fn pin_err(path: &Path) -> impl FnOnce(String) -> CaptureError + '_ {
    move |reason| CaptureError::Pinning {
        path: path.to_path_buf(),
        reason,
    }
}

/// Pins `link` at `path`.
fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink, CaptureError> {
    link.pin(path).map_err(|e| pin_err(path)(e.to_string()))
}

/// The link pinned at `path`, if there is one.
fn pinned_link(path: &Path) -> Result<Option<PinnedLink>, CaptureError> {
    if !path.exists() {
        return Ok(None);
    }
    PinnedLink::from_pin(path)
        .map(Some)
        .map_err(|e| pin_err(path)(e.to_string()))
}

/// How [`Capture::load_with_options`] loads capture.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureOptions<'a> {
    /// The cgroup-v2 root to attach at (`None`: detect, or mount one).
    pub cgroup_root: Option<&'a Path>,
    /// Where to pin maps and links in bpffs (`None`: nothing pinned).
    pub pin_dir: Option<&'a Path>,
    /// Splice each enrolled pod's app socket to its own ztunnel socket with
    /// sk_msg (zero copy step 2). Experimental, off by default: with an
    /// ingress redirect the kernel (6.18 here) fails the *sender's* `write`
    /// with ENOMEM when the receiver's queue is full instead of blocking it,
    /// so an app that writes faster than ztunnel forwards sees errors, and
    /// bulk throughput measured lower than the loopback TCP path (see
    /// docs/capture.md).
    pub splice: bool,
    /// With `pin_dir`: the executable to load in, as a short-lived child
    /// ([`loader`]; it must call [`loader::serve_if_asked`] first in `main`),
    /// so this process never parses the kernel's BTF. `None`: load here.
    pub loader: Option<&'a Path>,
}

impl Capture {
    /// Loads the programs and attaches connect4, connect6 and sockops at the
    /// cgroup-v2 root (`cgroup_root`, or the detected/mounted one when `None`).
    /// Nothing is pinned: dropping the capture detaches everything (tests, and
    /// tools that must leave nothing behind). Needs root.
    pub fn load(cgroup_root: Option<&Path>) -> Result<Self, CaptureError> {
        Self::load_with_options(CaptureOptions {
            cgroup_root,
            ..CaptureOptions::default()
        })
    }

    /// As [`load`](Self::load), but every map and link is pinned under
    /// `pin_dir` (on bpffs, mounted at `/sys/fs/bpf` if needed), and what is
    /// already pinned there is picked up instead of attached again: a
    /// restarted ztunnel finds its capture still in force (enrolled pods'
    /// connections failed closed meanwhile) and the same maps.
    pub fn load_pinned(cgroup_root: Option<&Path>, pin_dir: &Path) -> Result<Self, CaptureError> {
        Self::load_with_options(CaptureOptions {
            cgroup_root,
            pin_dir: Some(pin_dir),
            ..CaptureOptions::default()
        })
    }

    /// [`load`](Self::load) or [`load_pinned`](Self::load_pinned) (with
    /// `pin_dir`), with the experimental options.
    pub fn load_with_options(options: CaptureOptions<'_>) -> Result<Self, CaptureError> {
        let cgroup_root = match options.cgroup_root {
            Some(p) => p.to_path_buf(),
            None => cgroup2_root()?,
        };
        let Some(pin_dir) = options.pin_dir else {
            let mut loaded = load::load_object(&cgroup_root, None, options.splice)?;
            let maps = MAPS
                .iter()
                .map(|name| {
                    Ok((
                        *name,
                        loaded
                            .bpf
                            .take_map(name)
                            .ok_or(CaptureError::Missing(name))?,
                    ))
                })
                .collect::<Result<_, CaptureError>>()?;
            return Ok(Capture {
                programs: Programs::Owned(loaded.bpf),
                maps,
                cgroup_root,
                pins: None,
                cgroup_links: Vec::new(),
                inbound: HashMap::new(),
                reused: false,
            });
        };
        let pins = PinDir::prepare(pin_dir)?;
        let reused = match options.loader {
            Some(exe) => loader::run(exe, pin_dir, &cgroup_root, options.splice)?,
            None => {
                let loaded = load::load_object(&cgroup_root, Some(&pins), options.splice)?;
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                // Everything is pinned: open it the way a loader child leaves it.
                loaded.reused
            }
        };
        Self::open_pinned(pins, cgroup_root, reused)
    }

    /// The capture pinned under `pins`, opened without loading anything:
    /// maps, the sk_lookup program and the cgroup links.
    fn open_pinned(pins: PinDir, cgroup_root: PathBuf, reused: bool) -> Result<Self, CaptureError> {
        let mut maps = HashMap::new();
        for name in MAPS {
            let path = pins.map(name);
            let data = MapData::from_pin(&path).map_err(map_err(name))?;
            maps.insert(name, Map::from_map_data(data).map_err(map_err(name))?);
        }
        let path = pins.program(SK_LOOKUP);
        let sk_lookup = SkLookup::from_pin(&path).map_err(prog_err(SK_LOOKUP))?;
        let mut cgroup_links = Vec::new();
        for (_, link) in CGROUP_PROGRAMS {
            let path = pins.link(link);
            cgroup_links
                .push(pinned_link(&path)?.ok_or_else(|| pin_err(&path)("not pinned".into()))?);
        }
        Ok(Capture {
            programs: Programs::Pinned(Box::new(sk_lookup)),
            maps,
            cgroup_root,
            pins: Some(pins),
            cgroup_links,
            inbound: HashMap::new(),
            reused,
        })
    }

    /// The sk_lookup program, to attach to a pod namespace.
    fn sk_lookup(&mut self) -> Result<&mut SkLookup, CaptureError> {
        match &mut self.programs {
            Programs::Owned(bpf) => program(bpf, SK_LOOKUP),
            Programs::Pinned(p) => Ok(p),
        }
    }

    /// Did [`load_pinned`](Self::load_pinned) find the programs already
    /// attached (a ztunnel restart) rather than attach them?
    pub fn reused_pins(&self) -> bool {
        self.reused
    }

    /// Where the capture is pinned (`None`: not pinned).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinDir::root)
    }

    /// Whether every pinned link (the cgroup programs and each steered
    /// namespace's sk_lookup) runs a program this capture loaded: after a
    /// restart or upgrade, that the earlier ztunnel's programs were
    /// replaced. `true` when nothing is pinned.
    pub fn pinned_links_run_own_programs(&self) -> Result<bool, CaptureError> {
        let Some(pins) = &self.pins else {
            return Ok(true);
        };
        let mut links: Vec<(PathBuf, &'static str)> = CGROUP_PROGRAMS
            .iter()
            .map(|(prog, name)| (pins.link(name), *prog))
            .collect();
        links.extend(
            self.inbound
                .iter()
                .filter(|(_, i)| matches!(i.link, InboundLink::Pinned(_)))
                .map(|(cookie, _)| (pins.inbound_link(*cookie), SK_LOOKUP)),
        );
        for (path, prog) in links {
            let link = PinnedLink::from_pin(&path).map_err(|e| pin_err(&path)(e.to_string()))?;
            let attached = FdLink::from(link)
                .info()
                .map_err(|e| pin_err(&path)(e.to_string()))?
                .program_id();
            let ours = ProgramInfo::from_pin(pins.program(prog))
                .map_err(prog_err(prog))?
                .id();
            if attached != ours {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Number of cgroup links this capture holds pinned.
    pub fn pinned_cgroup_links(&self) -> usize {
        self.cgroup_links.len()
    }

    /// The cgroup the outbound programs are attached to.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, CaptureError> {
        let map = self.maps.get_mut(name).ok_or(CaptureError::Missing(name))?;
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
        if let Some(inbound) = self.inbound.remove(&netns_cookie) {
            let removed = self
                .hash_map::<[u8; 4], u32>("inbound_pods")?
                .remove(&inbound.pod_ip.octets());
            absent_is_ok(removed).map_err(map_err("inbound_pods"))?;
            match inbound.link {
                InboundLink::Owned(id) => {
                    self.sk_lookup()?.detach(id).map_err(prog_err(SK_LOOKUP))?;
                }
                InboundLink::Pinned(link) => unpin(link)?,
            }
        } else if let Some(p) = &self.pins {
            // Pinned by an earlier ztunnel and not picked up again.
            remove_pin(&p.inbound_link(netns_cookie))?;
        }
        Ok(())
    }

    /// After a restart, once the node agent has re-sent every enrolled pod:
    /// forgets what an earlier ztunnel pinned for namespaces not in `keep`
    /// (pods deleted while ztunnel was away). Namespaces registered for load
    /// balancing only are kept. Returns how many entries went.
    pub fn prune(&mut self, keep: &std::collections::HashSet<u64>) -> Result<usize, CaptureError> {
        let mut gone = 0;
        let stale: Vec<u64> = {
            let enrolled = self.hash_map::<u64, u32>("enrolled")?;
            enrolled
                .iter()
                .flatten()
                .filter(|(cookie, mode)| *mode == MODE_CAPTURE && !keep.contains(cookie))
                .map(|(cookie, _)| cookie)
                .collect()
        };
        for cookie in stale {
            self.release(cookie)?;
            gone += 1;
        }
        if let Some(p) = self.pins.clone() {
            for cookie in p.inbound_links() {
                if !keep.contains(&cookie) && !self.inbound.contains_key(&cookie) {
                    remove_pin(&p.inbound_link(cookie))?;
                    gone += 1;
                }
            }
        }
        let steered: std::collections::HashSet<[u8; 4]> =
            self.inbound.values().map(|i| i.pod_ip.octets()).collect();
        let mut pods = self.hash_map::<[u8; 4], u32>("inbound_pods")?;
        let stale: Vec<[u8; 4]> = pods
            .keys()
            .flatten()
            .filter(|ip| !steered.contains(ip))
            .collect();
        for ip in stale {
            absent_is_ok(pods.remove(&ip)).map_err(map_err("inbound_pods"))?;
            gone += 1;
        }
        Ok(gone)
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
                .maps
                .get_mut("inbound_plain")
                .ok_or(CaptureError::Missing("inbound_plain"))?;
            let mut sockets: SockHash<&mut MapData, [u8; 4]> =
                SockHash::try_from(map).map_err(map_err("inbound_plain"))?;
            sockets
                .insert(pod_ip.octets(), listener.as_raw_fd(), 0)
                .map_err(map_err("inbound_plain"))?;
        }
        self.hash_map::<[u8; 4], u32>("inbound_pods")?
            .insert(pod_ip.octets(), 1, 0)
            .map_err(map_err("inbound_pods"))?;
        if let Some(existing) = self.inbound.get_mut(&netns_cookie) {
            existing.pod_ip = pod_ip;
            return Ok(());
        }
        // As at load: a link an earlier ztunnel pinned is picked up, else
        // attach, and pin when pinning.
        let pin_path = self.pins.as_ref().map(|p| p.inbound_link(netns_cookie));
        let reused = match &pin_path {
            Some(path) => pinned_link(path)?,
            None => None,
        };
        let link = match (reused, &pin_path) {
            (Some(link), Some(path)) => {
                let fd = self.sk_lookup()?.fd().map_err(prog_err(SK_LOOKUP))?;
                if let Some(w) = load::update_link(path, fd.as_fd()) {
                    tracing::warn!("{w}");
                }
                InboundLink::Pinned(link)
            }
            _ => {
                let lookup = self.sk_lookup()?;
                let id = lookup.attach(netns).map_err(prog_err(SK_LOOKUP))?;
                match pin_path {
                    None => InboundLink::Owned(id),
                    Some(path) => {
                        let owned = lookup.take_link(id).map_err(prog_err(SK_LOOKUP))?;
                        InboundLink::Pinned(pin_link(FdLink::from(owned), &path)?)
                    }
                }
            }
        };
        self.inbound.insert(netns_cookie, Inbound { link, pod_ip });
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

/// Unpins a link and drops it: the kernel detaches it.
fn unpin(link: PinnedLink) -> Result<(), CaptureError> {
    link.unpin().map(drop).map_err(|source| CaptureError::Io {
        what: "unpinning an sk_lookup link".into(),
        source,
    })
}

/// Removes a pin file (a link nobody holds then detaches); absent is fine.
fn remove_pin(path: &Path) -> Result<(), CaptureError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CaptureError::Io {
            what: format!("removing {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Registers a namespace for Service load balancing only in the capture
/// pinned at `pin_dir`, from outside the ztunnel that owns it (the local
/// cluster's node agent does this for pods outside the mesh, as kube-proxy
/// would serve them).
pub fn balance_only_pinned(pin_dir: &Path, netns_cookie: u64) -> Result<(), CaptureError> {
    let path = PinDir::existing(pin_dir).map("enrolled");
    let data = MapData::from_pin(&path).map_err(map_err("enrolled"))?;
    let mut map: BpfHashMap<MapData, u64, u32> =
        BpfHashMap::try_from(Map::HashMap(data)).map_err(map_err("enrolled"))?;
    map.insert(netns_cookie, MODE_BALANCE, 0)
        .map_err(map_err("enrolled"))
}
