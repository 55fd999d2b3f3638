//! Start-up guards: one daemon per data directory, one daemon per UDP port.
//!
//! - [`DataDirLock`]: an exclusive `flock` on `DATA_DIR/chatd.lock`, held until the daemon
//!   has stopped (storage flushed). A second daemon on the same directory fails at once
//!   with the holder's pid, instead of RocksDB's "lock hold by current process" or, worse,
//!   two writers.
//! - [`probe_port`] and [`check_port_exclusive`]: the shards of one process share the port
//!   through SO_REUSEPORT, which the kernel also grants to any other process of the same user.
//!   Before binding, a plain socket (without SO_REUSEPORT) is bound and dropped: if the port
//!   is held, that fails without ever joining the holder's group (which would steer some of
//!   its packets to us for a moment). After binding, against a race between two starts, every UDP socket on the port is listed from `/proc/self/net/udp{,6}` (the
//!   process's network namespace; readable under systemd's `ProcSubset=pid` too); one that is
//!   not ours means another daemon (or anything else with SO_REUSEPORT) would split the
//!   traffic, so the start fails.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The held lock on a data directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "data directory {path} is in use by another chatd{}; stop it first, or give this one \
         its own data_dir",
        .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The pid the holder wrote into it, when readable.
        holder: Option<u32>,
    },
    /// The lock file could not be opened or written.
    #[error("lock file {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl DataDirLock {
    /// Takes the exclusive lock on `data_dir` (which must exist) without waiting, and writes
    /// this process's pid into the lock file.
    ///
    /// # Errors
    /// [`LockError::Held`] when another process (or another daemon in this process) holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let path = data_dir.join("chatd.lock");
        let io = |e| LockError::Io(path.clone(), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                return Err(LockError::Held { path, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// Why the daemon's UDP port is not its own.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Another process holds the port.
    #[error(
        "UDP port {port} is already bound by another process ({detail}), most likely another \
         chatd: SO_REUSEPORT would split the traffic between them; stop it or choose another \
         listen port"
    )]
    Taken {
        /// The port.
        port: u16,
        /// What shows it: the bind's error, or the foreign sockets' inodes.
        detail: String,
    },
    /// The check itself could not run.
    #[error("checking the UDP port: {what}: {source}")]
    Check {
        /// What could not be read or made.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

fn check_failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PortError {
    let what = what.into();
    move |source| PortError::Check { what, source }
}

/// Fails when `addr` (a fixed port) is already bound, by binding it without SO_REUSEPORT.
///
/// # Errors
/// [`PortError::Taken`] naming the port, or why the probe could not run.
pub fn probe_port(addr: SocketAddr) -> Result<(), PortError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(check_failed("a probe socket"))?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(false)
            .map_err(check_failed("a probe socket"))?;
    }
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(PortError::Taken {
            port: addr.port(),
            detail: "address in use".into(),
        }),
        // Anything else (no such address, no permission) is for the real bind to report.
        Err(_) => Ok(()),
    }
}

/// One UDP socket as `/proc/self/net/udp{,6}` lists it.
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    local: SocketAddr,
    connected: bool,
    inode: u64,
}

/// Fails when a UDP socket that is not among `ours` is bound to the port of `ours`, on an
/// address that overlaps theirs (the same address, or a wildcard on either side).
///
/// # Errors
/// [`PortError::Taken`] naming the port and the foreign sockets' inodes, or why the check
/// could not run.
pub fn check_port_exclusive(ours: &[UdpSocket]) -> Result<(), PortError> {
    let Some(first) = ours.first() else {
        return Ok(());
    };
    let local = first
        .local_addr()
        .map_err(check_failed("our socket's address"))?;
    let mut inodes = HashSet::new();
    for socket in ours {
        let fd = format!("/proc/self/fd/{}", socket.as_raw_fd());
        inodes.insert(
            std::fs::metadata(&fd)
                .map_err(check_failed(fd.clone()))?
                .ino(),
        );
    }
    let mut listed = Vec::new();
    for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => listed.extend(parse_proc_net_udp(&text)),
            // No IPv6 in this kernel or namespace: nothing to list.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(check_failed(table)(e)),
        }
    }
    let foreign = foreign_sockets(local, &inodes, &listed);
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(PortError::Taken {
            port: local.port(),
            detail: format!("socket inodes {foreign:?}"),
        })
    }
}

fn foreign_sockets(local: SocketAddr, ours: &HashSet<u64>, listed: &[Listed]) -> Vec<u64> {
    listed
        .iter()
        .filter(|s| {
            !s.connected
                && s.local.port() == local.port()
                && !ours.contains(&s.inode)
                && overlaps(s.local.ip(), local.ip())
        })
        .map(|s| s.inode)
        .collect()
}

fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(a), canonical(b));
    a.is_unspecified() || b.is_unspecified() || a == b
}

/// Parses the kernel's UDP socket table: after a header line, one socket per line with
/// `local_address rem_address ...`, addresses as hex in host byte order, and the inode as
/// the tenth field.
fn parse_proc_net_udp(text: &str) -> Vec<Listed> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_address(fields.get(1)?)?;
            let remote = parse_address(fields.get(2)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            Some(Listed {
                local,
                connected: remote.port() != 0,
                inode,
            })
        })
        .collect()
}

fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 32-bit word is printed as a host-order integer of the network-order bytes.
    let mut words = Vec::with_capacity(4);
    for chunk in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        words.push(word.to_ne_bytes());
    }
    let ip = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(*a)),
        [a, b, c, d] => {
            let mut octets = [0u8; 16];
            for (i, word) in [a, b, c, d].into_iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(word);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        match DataDirLock::acquire(dir.path()) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        DataDirLock::acquire(dir.path()).expect("free again once dropped");
    }

    #[test]
    fn the_kernel_table_parses() {
        // Lines as Linux prints them (x86_64): 127.0.0.1:4433, [::]:4433, a connected socket.
        let v4 = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  1: 0100007F:1151 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n\
                  2: 0100007F:D431 0100007F:1151 01 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 0\n";
        let listed = parse_proc_net_udp(v4);
        assert_eq!(
            listed,
            vec![
                Listed {
                    local: "127.0.0.1:4433".parse().unwrap(),
                    connected: false,
                    inode: 4242
                },
                Listed {
                    local: "127.0.0.1:54321".parse().unwrap(),
                    connected: true,
                    inode: 4343
                },
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                  0: 00000000000000000000000000000000:1151 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0\n\
                  1: 00000000000000000000000001000000:1151 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 778 2 0000000000000000 0\n";
        let listed = parse_proc_net_udp(v6);
        assert_eq!(listed[0].local, "[::]:4433".parse().unwrap());
        assert_eq!(listed[1].local, "[::1]:4433".parse().unwrap());
    }

    #[test]
    fn only_overlapping_sockets_of_others_count() {
        let ours: HashSet<u64> = [1, 2].into();
        let at = |addr: &str, inode, connected| Listed {
            local: addr.parse().unwrap(),
            connected,
            inode,
        };
        let local: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let listed = [
            at("127.0.0.1:4433", 1, false), // ours
            at("127.0.0.1:4433", 2, false), // ours
            at("127.0.0.1:4434", 3, false), // another port
            at("10.0.0.1:4433", 4, false),  // another address
            at("127.0.0.1:4433", 5, true),  // a connected client socket
            at("0.0.0.0:4433", 6, false),   // a wildcard covers ours
            at("[::]:4433", 7, false),      // so does a dual-stack wildcard
            at("[::ffff:127.0.0.1]:4433", 8, false),
        ];
        assert_eq!(foreign_sockets(local, &ours, &listed), vec![6, 7, 8]);
    }

    #[test]
    fn a_second_process_on_the_port_is_seen_and_our_own_shards_are_not() {
        let ours = crate::server::bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        check_port_exclusive(&ours).expect("our own shards share the port");
        // Another SO_REUSEPORT socket on the same port, as a second daemon would bind it.
        let port = ours[0].local_addr().unwrap();
        let intruder = crate::server::bind(port, 1).unwrap();
        let err = check_port_exclusive(&ours).unwrap_err();
        assert!(
            matches!(&err, PortError::Taken { port: p, detail } if *p == port.port() && detail.contains("socket inodes")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("UDP port {}", port.port())),
            "{err}"
        );
        drop(intruder);
        check_port_exclusive(&ours).expect("free again");
        // Before binding, the probe sees the port taken without joining its group.
        let err = probe_port(port).unwrap_err();
        assert!(
            matches!(&err, PortError::Taken { port: p, .. } if *p == port.port()),
            "{err}"
        );
        drop(ours);
        probe_port(port).expect("free once closed");
    }
}
