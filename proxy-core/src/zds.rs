//! The enrolment channel's transport (Istio's ZDS, docs/wire.md appendix
//! A): a unix SOCK_SEQPACKET socket, one protobuf message per packet, the
//! pod's netns fd attached to `add` with SCM_RIGHTS. Both ends use it:
//! ztunnel (`ztunnel::zds`, the client) and the node agent
//! (`ambit_node_agent`, the listener).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_api::zds::MAX_MESSAGE;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept, bind, connect, listen, recvmsg, sendmsg, socket,
};
use prost::Message;

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Takes ownership of a descriptor the kernel just handed us.
#[allow(unsafe_code)]
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by accept(2) or received via SCM_RIGHTS; it is
    // open and referenced by nothing else in this process.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A new unix SOCK_SEQPACKET socket.
fn seqpacket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_io)
}

/// One end of a ZDS connection.
#[derive(Debug)]
pub struct ZdsSocket {
    fd: OwnedFd,
}

/// A listening ZDS socket (the node agent's side).
#[derive(Debug)]
pub struct ZdsListener {
    fd: OwnedFd,
    path: PathBuf,
}

impl ZdsListener {
    /// Binds and listens at `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let fd = seqpacket()?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(nix_io)?).map_err(nix_io)?;
        listen(&fd, Backlog::new(8).map_err(nix_io)?).map_err(nix_io)?;
        Ok(ZdsListener {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Waits for a ztunnel to connect.
    pub fn accept(&self) -> io::Result<ZdsSocket> {
        let fd = accept(self.fd.as_raw_fd()).map_err(nix_io)?;
        Ok(ZdsSocket { fd: own(fd) })
    }

    /// Waits up to `timeout` for a ztunnel to connect; `Ok(None)` if none did.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<ZdsSocket>> {
        let tv = nix::sys::time::TimeVal::new(
            timeout.as_secs() as i64,
            i64::from(timeout.subsec_micros()),
        );
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(nix_io)?;
        match accept(self.fd.as_raw_fd()) {
            Ok(fd) => Ok(Some(ZdsSocket { fd: own(fd) })),
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(e) => Err(nix_io(e)),
        }
    }
}

impl Drop for ZdsListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ZdsSocket {
    /// Connects to the agent at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = seqpacket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path).map_err(nix_io)?).map_err(nix_io)?;
        Ok(ZdsSocket { fd })
    }

    /// Sets a receive timeout (None: block).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            t.map(|d| d.as_secs() as i64).unwrap_or(0),
            t.map(|d| i64::from(d.subsec_micros())).unwrap_or(0),
        );
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(nix_io)
    }

    /// Has the peer closed its end (or the connection failed)? Does not block
    /// or consume anything: the node agent asks between requests, to go back
    /// to waiting for a restarted ztunnel.
    pub fn peer_closed(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => false,
            Ok(_) => fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
            Err(_) => true,
        }
    }

    /// Sends one message, with `fd` attached when given.
    pub fn send<M: Message>(&self, msg: &M, fd: Option<RawFd>) -> io::Result<()> {
        let bytes = msg.encode_to_vec();
        let iov = [IoSlice::new(&bytes)];
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        sendmsg::<UnixAddr>(self.fd.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None)
            .map_err(nix_io)?;
        Ok(())
    }

    /// Receives one message and any fds that came with it. `Ok(None)` on EOF.
    pub fn recv<M: Message + Default>(&self) -> io::Result<Option<(M, Vec<OwnedFd>)>> {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(nix_io)?;
            let mut fds = Vec::new();
            for c in msg.cmsgs().map_err(nix_io)? {
                if let ControlMessageOwned::ScmRights(list) = c {
                    fds.extend(list.into_iter().map(own));
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return Ok(None);
        }
        let m = M::decode(&buf[..n]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((m, fds)))
    }
}
