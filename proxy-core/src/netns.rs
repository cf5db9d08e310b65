//! Network namespaces: running a closure inside one (to create sockets there) and
//! reading a namespace's cookie (the key the capture programs select pods by).
//!
//! A socket belongs to the namespace it was created in, for its whole life; so
//! ztunnel enters a pod's namespace only for the instant of `socket()`/`bind()`
//! and returns, on the same thread, before doing anything else.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

thread_local! {
    /// The namespace this thread lives in, opened at its first [`Netns::run`]
    /// (a thread always returns there, so it is the same every time): saves
    /// an open and a close per upstream connection.
    static HOME: std::cell::OnceCell<Netns> = const { std::cell::OnceCell::new() };
    /// Whether this thread is inside a [`Netns::run`] now.
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Netns> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("opening netns {}: {e}", path.display()))
        })?;
        Ok(Netns { file, path })
    }

    /// Wraps an already open namespace fd (received over the enrolment channel).
    pub fn from_file(file: File, label: impl Into<PathBuf>) -> Netns {
        Netns {
            file,
            path: label.into(),
        }
    }

    /// The calling thread's current namespace.
    pub fn current() -> io::Result<Netns> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// Where this namespace was opened from (for logs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the calling thread inside this namespace, then moves the
    /// thread back, even if `f` panics.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        if INSIDE.get() {
            // Nested: come back to the namespace the outer `run` entered.
            return self.run_from(&Netns::current()?, f);
        }
        HOME.with(|home| {
            let home = match home.get() {
                Some(h) => h,
                None => {
                    let h = Netns::current()?;
                    home.get_or_init(|| h)
                }
            };
            // Cleared on the way out, even if `f` panics.
            struct Inside;
            impl Drop for Inside {
                fn drop(&mut self) {
                    INSIDE.set(false);
                }
            }
            INSIDE.set(true);
            let _inside = Inside;
            self.run_from(home, f)
        })
    }

    fn run_from<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            io::Error::other(format!("entering netns {}: {e}", self.path.display()))
        })?;
        struct Return<'a>(&'a Netns);
        impl Drop for Return<'_> {
            fn drop(&mut self) {
                if let Err(e) = setns(self.0.file.as_fd(), CloneFlags::CLONE_NEWNET) {
                    // A thread stuck in a pod's namespace would create every later
                    // socket in the wrong place: stop rather than go on.
                    tracing::error!(error = %e, "cannot return to the home network namespace");
                    std::process::abort();
                }
            }
        }
        let _back = Return(home);
        Ok(f())
    }

    /// The namespace's cookie (`SO_NETNS_COOKIE` of a socket created inside it).
    pub fn cookie(&self) -> io::Result<u64> {
        let sock = self.run(|| std::net::UdpSocket::bind("127.0.0.1:0"))??;
        socket_netns_cookie(sock.as_fd())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `getsockopt(SOL_SOCKET, SO_NETNS_COOKIE)`: the cookie of the namespace a socket
/// lives in. nix and socket2 do not wrap this option.
#[allow(unsafe_code)]
pub fn socket_netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is a valid open socket for the duration of the call; `cookie`
    // and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}
