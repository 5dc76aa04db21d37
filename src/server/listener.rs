//! Where the listening socket comes from: inherited from a supervisor
//! (systemd's socket activation, the `sd_listen_fds` protocol: fd 3,
//! `LISTEN_FDS`, `LISTEN_PID`), or bound to `--listen`.
//!
//! An inherited socket outlives the process: the supervisor keeps its own
//! copy, so connections that arrive while the service restarts wait in the
//! kernel's backlog for the next process instead of being refused. A bound
//! socket closes with the process; its backlog is only large, so that a
//! burst does not overflow it while requests are being served.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use listenfd::ListenFd;
use tokio::net::{TcpListener, TcpSocket};

/// Listen backlog of a bound socket: connections the kernel completes
/// before the service accepts them. Linux caps it at `net.core.somaxconn`
/// (4096 by default since 5.4); `scripts/b24-journal.socket` sets the same
/// `Backlog=`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// The socket-activation variables as the process found them. Read them
/// with [`Activation::from_env`] before any thread starts: `listenfd`
/// unsets them (so that a child does not take them for its own), and
/// changing the environment while other threads read it is undefined.
pub struct Activation {
    fds: ListenFd,
    /// `LISTEN_FDS` and `LISTEN_PID` as they were, when `LISTEN_FDS` was set.
    found: Option<(String, Option<String>)>,
}

/// How the service got its socket, for the start-up line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// fd 3, from the supervisor.
    Inherited,
    /// Bound to `--listen`.
    Bound,
}

impl Origin {
    /// The name in the start-up line.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Inherited => "inherited fd 3 (socket activation)",
            Origin::Bound => "bound --listen",
        }
    }
}

/// Why there is no socket to serve on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The variables are set, but fd 3 is not what they promise.
    #[error("LISTEN_FDS is set but fd 3 is not a listening TCP socket ({why}); start the service from its .socket unit, or unset LISTEN_FDS and LISTEN_PID to bind --listen")]
    NotListening {
        /// What fd 3 is instead.
        why: String,
    },
    /// `LISTEN_FDS` names another number of sockets than one.
    #[error("LISTEN_FDS={0:?}: expected exactly one socket (fd 3); the .socket unit must have one ListenStream=")]
    Count(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

impl Activation {
    /// Reads (and unsets) `LISTEN_FDS` and `LISTEN_PID`. Call it first
    /// thing in `main`, before the async runtime starts its threads.
    pub fn from_env() -> Activation {
        let found = std::env::var("LISTEN_FDS")
            .ok()
            .map(|fds| (fds, std::env::var("LISTEN_PID").ok()));
        Activation {
            fds: ListenFd::from_env(),
            found,
        }
    }

    /// No inherited socket: bind `--listen` (the in-process tests).
    pub fn none() -> Activation {
        Activation {
            fds: ListenFd::empty(),
            found: None,
        }
    }

    /// The inherited socket if the variables are set for this process, else
    /// `listen` bound with a [`LISTEN_BACKLOG`].
    pub fn listener(mut self, listen: SocketAddr) -> Result<(TcpListener, Origin), ListenError> {
        let Some((count, pid)) = self.found.take() else {
            return bind(listen).map(|l| (l, Origin::Bound));
        };
        let ours = std::process::id().to_string();
        if let Some(pid) = pid.filter(|p| !p.is_empty() && *p != ours) {
            // sd_listen_fds' rule: the variables were meant for another
            // process (an ancestor that did not unset them).
            tracing::info!(
                listen_pid = %pid,
                "LISTEN_FDS is meant for another process: ignored, binding --listen"
            );
            return bind(listen).map(|l| (l, Origin::Bound));
        }
        if count.trim() != "1" || self.fds.len() != 1 {
            return Err(ListenError::Count(count));
        }
        let not_listening = |why: String| ListenError::NotListening { why };
        let std_listener = self
            .fds
            .take_tcp_listener(0)
            .map_err(|e| not_listening(e.to_string()))?
            .ok_or_else(|| not_listening("fd 3 was already taken".into()))?;
        if !is_listening(&std_listener).map_err(|e| not_listening(e.to_string()))? {
            return Err(not_listening(
                "it is a TCP socket, but not listening".into(),
            ));
        }
        std_listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(std_listener))
            .map(|l| (l, Origin::Inherited))
            .map_err(|e| not_listening(e.to_string()))
    }
}

/// Binds `addr` with a [`LISTEN_BACKLOG`] (tokio's `bind` uses 1024).
fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let err = |source| ListenError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // A restart must not wait for the old connections' TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Whether `socket` is listening (`SO_ACCEPTCONN`): a bound or connected
/// TCP socket passes `listenfd`'s checks, but `accept` on it would fail
/// for ever.
fn is_listening(socket: &impl AsRawFd) -> std::io::Result<bool> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the duration of the call, and `value` and
    // `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value != 0)
}
