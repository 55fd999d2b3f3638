//! Steering packets to shards by connection id, so that a client whose address changes stays
//! on the shard that holds its connection. The shards' sockets share the port through
//! SO_REUSEPORT, which by itself picks a socket by a hash of the addresses; a classic BPF
//! program attached to the group (`SO_ATTACH_REUSEPORT_CBPF`, through nix) picks it from the
//! packet instead. It sees the UDP payload and answers the index of a socket in the group,
//! which is the shard's id (the sockets join the group in shard order):
//!
//! - a short-header packet whose destination id is routable (16 bytes from `0x0f`,
//!   [`crate::tls::RoutableCids`]): the shard byte of the id;
//! - a long-header packet with such a destination id (the client's Handshake packets): the
//!   same;
//! - another long-header packet (a client's Initial, to the id it chose at random): its
//!   first four id bytes modulo the shard count, the same for every packet of that
//!   handshake;
//! - anything else: no answer the group can use, so the kernel's address hash decides.
//!
//! A shard byte beyond the shard count (ids from a daemon that ran more shards) also falls
//! back to the address hash; that shard resets the connection, as after any restart.

use std::net::UdpSocket;

use nix::libc::{sock_filter, sock_fprog};

use crate::tls::cid;

// Classic BPF opcodes (linux/filter.h).
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
const RET_A: u16 = 0x16; // BPF_RET | BPF_A
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

fn op(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The program for `shards` sockets. Offsets are into the UDP payload.
fn program(shards: u32) -> Vec<sock_filter> {
    let first = u32::from(cid::FIRST_OCTET);
    let len = u32::try_from(cid::CID_LEN).unwrap_or(u32::MAX);
    let shard = u32::try_from(cid::SHARD_BYTE).unwrap_or(u32::MAX);
    // Short header: the destination id starts at 1. Long header: its length is at 5 and it
    // starts at 6.
    vec![
        /* 0 */ op(LD_B_ABS, 0, 0, 0),
        /* 1 */ op(JSET_K, 4, 0, 0x80), // long header: to 6
        /* 2 */ op(LD_B_ABS, 0, 0, 1),
        /* 3 */ op(JEQ_K, 0, 11, first), // not routable: to 15
        /* 4 */ op(LD_B_ABS, 0, 0, 1 + shard),
        /* 5 */ op(RET_A, 0, 0, 0),
        /* 6 */ op(LD_B_ABS, 0, 0, 5),
        /* 7 */ op(JEQ_K, 0, 4, len), // not ours: to 12
        /* 8 */ op(LD_B_ABS, 0, 0, 6),
        /* 9 */ op(JEQ_K, 0, 2, first), // not ours: to 12
        /* 10 */ op(LD_B_ABS, 0, 0, 6 + shard),
        /* 11 */ op(RET_A, 0, 0, 0),
        /* 12 */ op(LD_W_ABS, 0, 0, 6),
        /* 13 */ op(MOD_K, 0, 0, shards),
        /* 14 */ op(RET_A, 0, 0, 0),
        /* 15 */ op(RET_K, 0, 0, u32::MAX),
    ]
}

/// Attaches the program to the group of `sockets` (bound in shard order).
///
/// # Errors
/// When the kernel refuses it.
pub(super) fn by_connection_id(sockets: &[UdpSocket]) -> std::io::Result<()> {
    let Some(first) = sockets.first() else {
        return Ok(());
    };
    let shards = u32::try_from(sockets.len())
        .ok()
        .filter(|n| *n <= 256)
        .ok_or_else(|| std::io::Error::other("connection ids name at most 256 shards"))?;
    let mut filter = program(shards);
    let fprog = sock_fprog {
        len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
        filter: filter.as_mut_ptr(),
    };
    nix::sys::socket::setsockopt(
        first,
        nix::sys::socket::sockopt::AttachReusePortCbpf,
        &fprog,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The program, run by a small interpreter of the opcodes it uses, on the packets it
    /// must tell apart.
    fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = program[pc];
            let k = i.k as usize;
            match i.code {
                LD_B_ABS => match packet.get(k) {
                    Some(b) => a = u32::from(*b),
                    None => return 0,
                },
                LD_W_ABS => match packet.get(k..k + 4) {
                    Some(w) => a = u32::from_be_bytes([w[0], w[1], w[2], w[3]]),
                    None => return 0,
                },
                JSET_K | JEQ_K => {
                    let taken = if i.code == JSET_K {
                        a & i.k != 0
                    } else {
                        a == i.k
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                MOD_K => a %= i.k,
                RET_A => return a,
                RET_K => return i.k,
                other => panic!("opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn packets_go_to_the_shard_their_connection_id_names() {
        use quinn::ConnectionIdGenerator as _;
        let program = program(4);
        let mut ids = cid::RoutableCids::new("0x00000000000000a1".parse().unwrap(), &[1; 32], 3);
        let id = ids.generate_cid();
        let mut short = vec![0x40];
        short.extend_from_slice(&id);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(run(&program, &short), 3);
        let mut handshake = vec![0xe0, 0, 0, 0, 1, 16];
        handshake.extend_from_slice(&id);
        handshake.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
        assert_eq!(run(&program, &handshake), 3);
        // A client's Initial to the 8 bytes it chose: the same shard for every retransmission.
        let initial = [0xc0, 0, 0, 0, 1, 8, 0, 0, 1, 7, 9, 9, 9, 9, 0];
        assert_eq!(run(&program, &initial), 0x0107 % 4);
        // A short header with an id that is not routable: the kernel's hash.
        assert_eq!(run(&program, &[0x40, 0x12, 0x34, 0, 0, 0]), u32::MAX);
    }
}
