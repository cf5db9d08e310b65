//! Sockets a proxy makes inside a network namespace: listeners (a pod's
//! 15001/15006/15008, a node's admin ports) and marked sockets for the
//! connections it originates on a pod's behalf (the mark keeps the capture
//! programs off them).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

use crate::netns::Netns;

/// Binds a listener at `addr` inside `ns`. Its TCP_NODELAY is inherited by
/// every accepted connection (one setsockopt per listener, not per connection).
pub fn listen_in(ns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    let std_listener = ns.run(|| -> io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        Ok(s.into())
    })??;
    TcpListener::from_std(std_listener)
}

/// An unconnected TCP socket inside `ns` carrying `mark` (`SO_MARK`), ready
/// to dial `dst`.
pub fn marked_socket_in(ns: &Netns, dst: SocketAddr, mark: u32) -> io::Result<TcpSocket> {
    let std_stream = ns.run(|| -> io::Result<std::net::TcpStream> {
        // Non-blocking from socket(2) on: no fcntl round trips per connection.
        let s = Socket::new(Domain::for_address(dst), Type::STREAM.nonblocking(), None)?;
        s.set_mark(mark)?;
        s.set_nodelay(true)?;
        Ok(s.into())
    })??;
    Ok(TcpSocket::from_std_stream(std_stream))
}
