//! Copying a map's entries into another map of the same key and value size,
//! by raw `bpf(2)` commands (aya's maps are typed by key and value, and the
//! sizes here are known only at run time). Used when an upgrade changes a
//! pinned map in a way its entries survive (its capacity or flags): the new
//! map gets them before the new programs run, so enrolled pods stay
//! captured across the change.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::MapData;

use crate::link_update::sys_bpf;

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The `BPF_MAP_*_ELEM` / `BPF_MAP_GET_NEXT_KEY` part of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

impl ElemAttr {
    fn new(map: BorrowedFd<'_>, key: *const u8, value: *mut u8) -> Self {
        ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            _pad: 0,
            key: key as u64,
            value: value as u64,
            flags: 0,
        }
    }
}

/// Copies every entry of `from` into `to`; returns how many were copied.
/// Both maps must have the same key and value sizes (read from the kernel
/// here, so the buffers the kernel writes into always fit). Entries deleted
/// while copying are skipped.
pub(crate) fn copy_entries(from: &MapData, to: &MapData) -> io::Result<usize> {
    let sizes = |m: &MapData| {
        m.info()
            .map(|i| (i.key_size() as usize, i.value_size() as usize))
            .map_err(io::Error::other)
    };
    let (key_size, value_size) = sizes(from)?;
    if sizes(to)? != (key_size, value_size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "maps differ in key or value size",
        ));
    }
    let (from, to) = (from.fd().as_fd(), to.fd().as_fd());
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; value_size];
    let mut copied = 0;
    let mut first = true;
    loop {
        // A null key asks for the first one.
        let current = if first {
            std::ptr::null()
        } else {
            key.as_ptr()
        };
        match sys_bpf(
            BPF_MAP_GET_NEXT_KEY,
            &mut ElemAttr::new(from, current, next.as_mut_ptr()),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(copied),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        match sys_bpf(
            BPF_MAP_LOOKUP_ELEM,
            &mut ElemAttr::new(from, key.as_ptr(), value.as_mut_ptr()),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        sys_bpf(
            BPF_MAP_UPDATE_ELEM,
            &mut ElemAttr::new(to, key.as_ptr(), value.as_mut_ptr()),
        )?;
        copied += 1;
    }
}
