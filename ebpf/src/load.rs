//! Loading `capture.o` into the kernel and attaching its cgroup programs, or,
//! over an earlier ztunnel's pins, putting this build's programs behind the
//! links that are still attached. This is the only place that builds an
//! [`EbpfLoader`], which parses the kernel's BTF (megabytes) whatever it is
//! told: pinned captures run it in a short-lived child ([`crate::loader`]) so
//! the long-lived ztunnel never does.

use std::os::fd::AsFd;
use std::path::Path;

use aya::maps::{Array, MapData, MapInfo, SockHash};
use aya::programs::links::FdLink;
use aya::programs::{CgroupSockAddr, SkLookup, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};

use crate::pins::PinDir;
use crate::{
    CAPTURE_OBJ, CGROUP_PROGRAMS, CaptureError, LINK_MODE, MAPS, SK_LOOKUP, link_update, map_copy,
    map_err, pin_err, pin_link, pinned_link, pinned_programs, prog_err, program,
};

/// What a load left behind in this process.
pub(crate) struct Loaded {
    /// The object: its programs own the cgroup links when nothing is pinned.
    pub bpf: Ebpf,
    /// Whether an earlier ztunnel's links were found attached.
    pub reused: bool,
    /// What to log: pinned links that kept an earlier program (not fatal: it
    /// still captures) and pinned maps replaced because their layout changed.
    pub warnings: Vec<String>,
}

/// Loads the object, attaches connect4, connect6 and sockops at
/// `cgroup_root` (or updates the links pinned under `pins`), loads sk_lookup,
/// attaches sk_msg when splicing and writes the run-time settings. With
/// `pins`, every map, link and program ends up pinned there, so the caller may
/// drop the result and open the capture from the pins alone.
pub(crate) fn load_object(
    cgroup_root: &Path,
    pins: Option<&PinDir>,
    splice: bool,
) -> Result<Loaded, CaptureError> {
    let mut loader = EbpfLoader::new();
    // Our programs need no CO-RE relocations. (aya 0.14 has parsed the
    // kernel's BTF in `new` already; this only drops it early.)
    loader.btf(None);
    let mut warnings = Vec::new();
    let mut retired = Vec::new();
    if let Some(p) = pins {
        retired = retire_incompatible_maps(p)?;
        for name in MAPS {
            loader.map_pin_path(name, p.map(name));
        }
    }
    let mut bpf = loader.load(CAPTURE_OBJ)?;
    // Before any link runs this build's programs: what the old maps held.
    for old in retired {
        warnings.push(carry_over(&bpf, old)?);
    }
    let cgroup = std::fs::File::open(cgroup_root).map_err(|source| CaptureError::Io {
        what: format!("opening cgroup {}", cgroup_root.display()),
        source,
    })?;

    let mut reused = false;
    for (prog, link_name) in CGROUP_PROGRAMS {
        let pinned_at = pins.map(|p| p.link(link_name));
        let earlier = match &pinned_at {
            Some(path) => pinned_link(path)?,
            None => None,
        };
        reused |= earlier.is_some();
        // The two program types share no trait for load/attach/take_link.
        macro_rules! attach_at_root {
            ($ty:ty) => {{
                let p: &mut $ty = program(&mut bpf, prog)?;
                p.load().map_err(prog_err(prog))?;
                match (earlier, &pinned_at) {
                    // An earlier ztunnel's link stays attached (capture
                    // never lapses) and now runs this build's program.
                    (Some(link), Some(path)) => {
                        let fd = p.fd().map_err(prog_err(prog))?;
                        warnings.extend(update_link(path, fd.as_fd()));
                        Some(link)
                    }
                    _ => {
                        let id = p
                            .attach(cgroup.as_fd(), LINK_MODE)
                            .map_err(prog_err(prog))?;
                        match &pinned_at {
                            None => None,
                            Some(path) => {
                                let owned = p.take_link(id).map_err(prog_err(prog))?;
                                let fd = FdLink::try_from(owned)
                                    .map_err(|e| pin_err(path)(e.to_string()))?;
                                Some(pin_link(fd, path)?)
                            }
                        }
                    }
                }
            }};
        }
        // A pinned link stays attached when this process lets go of it.
        let _pinned = if prog == "ambit_sockops" {
            attach_at_root!(SockOps)
        } else {
            attach_at_root!(CgroupSockAddr)
        };
    }

    let lookup: &mut SkLookup = program(&mut bpf, SK_LOOKUP)?;
    lookup.load().map_err(prog_err(SK_LOOKUP))?;

    if splice {
        attach_splice(&mut bpf, pins.is_some())?;
    }
    write_settings(&mut bpf, splice)?;
    if let Some(p) = pins {
        for name in pinned_programs() {
            pin_program(&mut bpf, name, &p.program(name))?;
        }
    }
    Ok(Loaded {
        bpf,
        reused,
        warnings,
    })
}

/// What must match for a pinned map to be reused: aya reuses a map pinned
/// under the same name whatever its layout, and this build's programs would
/// then run against an earlier build's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapLayout {
    /// `enum bpf_map_type`.
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl std::fmt::Display for MapLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} value {} entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// A pinned map of another layout, unpinned; its entries may still be
/// carried over into the new map.
struct Retired {
    name: &'static str,
    map: MapData,
    layout: MapLayout,
    wanted: MapLayout,
}

/// Unpins every map an earlier ztunnel pinned whose layout is not this
/// build's, so the load creates it afresh, and returns them. Reusing such a
/// map would have the new programs read and write it with the wrong sizes.
fn retire_incompatible_maps(pins: &PinDir) -> Result<Vec<Retired>, CaptureError> {
    let object =
        aya_obj::Object::parse(CAPTURE_OBJ).map_err(|e| CaptureError::Object(e.to_string()))?;
    let mut retired = Vec::new();
    for name in MAPS {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let def = object.maps.get(name).ok_or(CaptureError::Missing(name))?;
        let wanted = MapLayout {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries: def.max_entries(),
            flags: def.map_flags(),
        };
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        let layout = MapLayout {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        if layout != wanted {
            let map = MapData::from_pin(&path).map_err(map_err(name))?;
            crate::remove_pin(&path)?;
            retired.push(Retired {
                name,
                map,
                layout,
                wanted,
            });
        }
    }
    Ok(retired)
}

/// Copies `old`'s entries into this load's map of the same name when keys
/// and values kept their sizes (a changed capacity or flags), so enrolled
/// pods stay captured across the change. Otherwise they are lost: `enrolled`
/// and `services` are filled again as the node agent and xDS re-send their
/// state after the restart (until then those pods are not captured),
/// in-flight `orig_dst` records go with their connections. Returns the
/// warning to log either way.
fn carry_over(bpf: &Ebpf, old: Retired) -> Result<String, CaptureError> {
    let Retired {
        name,
        map,
        layout,
        wanted,
    } = old;
    let changed = format!("pinned map {name} ({layout}) is not this build's ({wanted})");
    let same_sizes = layout.key_size == wanted.key_size
        && layout.value_size == wanted.value_size
        && layout.map_type == wanted.map_type;
    if !same_sizes {
        return Ok(format!("{changed}: replaced by an empty one"));
    }
    // Socket maps hold sockets, which ztunnel inserts again itself.
    let new = match bpf.map(name).ok_or(CaptureError::Missing(name))? {
        aya::maps::Map::HashMap(m) | aya::maps::Map::LruHashMap(m) | aya::maps::Map::Array(m) => m,
        _ => return Ok(format!("{changed}: replaced by an empty one")),
    };
    let copied = map_copy::copy_entries(&map, new).map_err(|source| CaptureError::Io {
        what: format!("copying the entries of pinned map {name}"),
        source,
    })?;
    Ok(format!(
        "{changed}: replaced, {copied} entries carried over"
    ))
}

/// Points the link pinned at `pin` to `program` (this build's); on failure
/// the link keeps the program it had, which still captures, and the warning
/// to log is returned.
pub(crate) fn update_link(pin: &Path, program: std::os::fd::BorrowedFd<'_>) -> Option<String> {
    link_update::replace_program(pin, program).err().map(|e| {
        format!(
            "pinned link {} keeps the program an earlier ztunnel attached: {e}",
            pin.display()
        )
    })
}

/// Pins program `name` at `path`, replacing the program an earlier load
/// pinned there (which the kernel frees once no link runs it).
fn pin_program(bpf: &mut Ebpf, name: &'static str, path: &Path) -> Result<(), CaptureError> {
    crate::remove_pin(path)?;
    bpf.program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .pin(path)
        .map_err(|e| pin_err(path)(e.to_string()))
}

/// `SETTING_*` bits of `capture.c`.
const SETTING_SPLICE: u32 = 1;

/// Writes this load's options into the `settings` map, which the programs
/// read at run time: with pins, the programs already attached follow the
/// options of the ztunnel that started last.
fn write_settings(bpf: &mut Ebpf, splice: bool) -> Result<(), CaptureError> {
    let map = bpf
        .map_mut("settings")
        .ok_or(CaptureError::Missing("settings"))?;
    let mut settings: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(map_err("settings"))?;
    let bits = if splice { SETTING_SPLICE } else { 0 };
    settings.set(0, bits, 0).map_err(map_err("settings"))
}

/// Attaches the sk_msg program to the `splice` SOCKHASH. Pinned captures
/// leave the attachment to the (pinned) map when they go: the map holds the
/// program, so splicing outlives the process like the rest of capture.
fn attach_splice(bpf: &mut Ebpf, pinned: bool) -> Result<(), CaptureError> {
    let map_fd = {
        let map = bpf.map("splice").ok_or(CaptureError::Missing("splice"))?;
        let hash: SockHash<&MapData, [u8; 24]> =
            SockHash::try_from(map).map_err(map_err("splice"))?;
        hash.fd().try_clone().map_err(|source| CaptureError::Io {
            what: "cloning the splice map fd".into(),
            source,
        })?
    };
    let msg: &mut SkMsg = program(bpf, "ambit_sk_msg")?;
    msg.load().map_err(prog_err("ambit_sk_msg"))?;
    let id = msg.attach(&map_fd).map_err(prog_err("ambit_sk_msg"))?;
    if pinned {
        let link = msg.take_link(id).map_err(prog_err("ambit_sk_msg"))?;
        // Dropping the link would detach the program from the map.
        std::mem::forget(link);
    }
    Ok(())
}
