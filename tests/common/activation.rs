//! Socket activation as systemd does it, for the real binary: the test
//! holds a listening socket (the `.socket` unit's part) and starts each
//! process with it as fd 3, `LISTEN_FDS=1` and `LISTEN_PID` = the child's
//! own pid, set between `fork` and `exec`. The socket outlives every
//! process, so connections made while none runs wait in its backlog.
//! [`Notifications`] plays systemd's `NOTIFY_SOCKET`.

use std::ffi::CString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{TestServer, BIN};

/// The backlog of the held socket, as `scripts/b24-journal.socket` sets.
pub const BACKLOG: i32 = 4096;

/// A listening socket on 127.0.0.1:0 that the test keeps open.
pub struct HeldSocket {
    listener: TcpListener,
}

impl HeldSocket {
    pub fn new() -> HeldSocket {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&addr.into()).expect("bind 127.0.0.1:0");
        socket.listen(BACKLOG).expect("listen");
        HeldSocket {
            listener: socket.into(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Default for HeldSocket {
    fn default() -> Self {
        Self::new()
    }
}

/// The binary with `args`, as `base_command` sets it up, that gets `fd` as
/// fd 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the child's own pid.
///
/// The environment is edited in the child, between fork and exec (where
/// the pid is known): std passes a `Command`'s own copy of the environment
/// to exec once any variable was set on it, so this command sets none and
/// the child edits the environment it inherited instead.
pub fn activated_command(fd: RawFd, args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let unset: Vec<CString> = std::env::vars()
        .filter(|(k, _)| k.starts_with("B24J_") || k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET")
        .map(|(k, _)| CString::new(k).unwrap())
        .collect();
    let set: Vec<(CString, CString)> = [("RUST_LOG", "trace"), ("LISTEN_FDS", "1")]
        .iter()
        .chain(envs)
        .map(|(k, v)| (CString::new(*k).unwrap(), CString::new(*v).unwrap()))
        .collect();
    // SAFETY: between fork and exec the closure only calls dup2, fcntl,
    // getpid, unsetenv and setenv on data prepared before the fork (glibc's
    // fork handlers leave malloc usable in the child, which setenv needs).
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2(3, 3) would keep FD_CLOEXEC.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for k in &unset {
                libc::unsetenv(k.as_ptr());
            }
            for (k, v) in &set {
                if libc::setenv(k.as_ptr(), v.as_ptr(), 1) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut pid = [0u8; 16];
            let text = format_pid(libc::getpid(), &mut pid);
            if libc::setenv(c"LISTEN_PID".as_ptr(), text.as_ptr().cast(), 1) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `pid` as a NUL-terminated decimal string in `buf`, without allocating.
fn format_pid(pid: libc::pid_t, buf: &mut [u8; 16]) -> &[u8] {
    let mut digits = [0u8; 12];
    let mut n = pid as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    buf[len] = 0;
    &buf[..=len]
}

/// Starts the binary on the held socket (waits for its `listening on`
/// line); panics with its output if it does not come up.
pub fn spawn_activated(
    socket: &HeldSocket,
    args: Vec<String>,
    envs: &[(&str, &str)],
) -> TestServer {
    let cmd = activated_command(socket.fd(), &args, envs);
    TestServer::try_spawn_command(cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

/// systemd's notification socket: a datagram socket the child is told of
/// through `NOTIFY_SOCKET`.
pub struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notifications {
    /// Binds `dir/notify.sock`.
    pub fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Notifications { socket, path }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The next message, or `None` after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Waits (up to `timeout`) for a message that contains `line`; returns
    /// the messages seen until then, that one last.
    pub fn wait_for(&self, line: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left.max(Duration::from_millis(1))) {
                Some(msg) => {
                    let done = msg.lines().any(|l| l == line);
                    seen.push(msg);
                    if done {
                        return seen;
                    }
                }
                None => break,
            }
        }
        panic!("no {line:?} notification within {timeout:?}; got {seen:?}");
    }
}
