//! Connection ids a load balancer can route: QUIC-LB's unencrypted layout
//! (draft-ietf-quic-load-balancers), as an AWS Network Load Balancer's QUIC listener reads
//! it. With `cluster.server_id` set, every connection id a node issues is 16 bytes:
//!
//! ```text
//! 0      first octet 0x0f: config rotation 0 (3 bits), the length after it, 15 (5 bits)
//! 1..9   the node's server id (the target's QuicServerId at the load balancer)
//! 9      the shard that issued it
//! 10..13 random
//! 13..16 check: HMAC-SHA256(key, bytes 0..13), first 3 bytes
//! ```
//!
//! The load balancer routes a packet by bytes 1..9 whatever the client's address, and the
//! node's reuseport program (`server::steer`) by byte 9, so a client whose address changes
//! still reaches its node and its shard. The check lets a node tell the
//! cluster's connection ids from noise: quinn answers a packet for a connection it does not
//! hold with a stateless reset only when `validate` accepts its id, and every node shares
//! the key (derived from `cluster.secret`), so when a node dies, whichever node the load
//! balancer sends its clients' next packets to resets them at once.

use hmac::Mac;
use quinn::ConnectionIdGenerator;
use quinn_proto::{ConnectionId, InvalidCid};
use sha2::Sha256;

/// Length of a routable connection id.
pub const CID_LEN: usize = 16;
/// Length of a server id.
pub const SERVER_ID_LEN: usize = 8;
/// The first octet: config rotation 0 (top 3 bits), then the length of the rest, 15,
/// self-encoded (low 5 bits).
pub(crate) const FIRST_OCTET: u8 = 0x0f;
const _: () = assert!(FIRST_OCTET as usize == CID_LEN - 1);
/// Where the issuing shard is.
pub(crate) const SHARD_BYTE: usize = 1 + SERVER_ID_LEN;
const RANDOM: std::ops::Range<usize> = SHARD_BYTE + 1..SHARD_BYTE + 4;
const CHECKED: usize = SHARD_BYTE + 4;

/// A QUIC-LB server id: 8 bytes, written `0x` and 16 lowercase hex digits (as AWS takes a
/// target's `QuicServerId`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServerId(pub [u8; SERVER_ID_LEN]);

impl std::str::FromStr for ServerId {
    type Err = String;

    fn from_str(text: &str) -> Result<ServerId, String> {
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| format!("{text:?} does not start with 0x"))?;
        if digits.len() != 2 * SERVER_ID_LEN
            || !digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("{text:?} is not 0x and 16 lowercase hex digits"));
        }
        let mut id = [0u8; SERVER_ID_LEN];
        hex::decode_to_slice(digits, &mut id).map_err(|e| e.to_string())?;
        Ok(ServerId(id))
    }
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

/// Issues routable connection ids carrying one server id and one shard, and accepts any id
/// the cluster's key checks (whichever node and shard issued it).
#[derive(Clone)]
pub struct RoutableCids {
    server_id: ServerId,
    shard: u8,
    key: hmac::Hmac<Sha256>,
}

impl RoutableCids {
    /// Ids for `server_id` and `shard`, checked with `key` (every node of the cluster has
    /// the same).
    #[must_use]
    pub fn new(server_id: ServerId, key: &[u8; 32], shard: u8) -> RoutableCids {
        RoutableCids {
            server_id,
            shard,
            key: <hmac::Hmac<Sha256> as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length")),
        }
    }

    fn check(&self, head: &[u8]) -> [u8; CID_LEN - CHECKED] {
        let mut mac = self.key.clone();
        mac.update(head);
        let tag = mac.finalize().into_bytes();
        let mut check = [0u8; CID_LEN - CHECKED];
        check.copy_from_slice(&tag[..CID_LEN - CHECKED]);
        check
    }

    /// The server id a routable connection id carries, as a load balancer reads it.
    #[must_use]
    pub fn server_id_of(cid: &[u8]) -> Option<ServerId> {
        if cid.len() != CID_LEN || cid[0] != FIRST_OCTET {
            return None;
        }
        let mut id = [0u8; SERVER_ID_LEN];
        id.copy_from_slice(&cid[1..=SERVER_ID_LEN]);
        Some(ServerId(id))
    }
}

impl ConnectionIdGenerator for RoutableCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; CID_LEN];
        cid[0] = FIRST_OCTET;
        cid[1..=SERVER_ID_LEN].copy_from_slice(&self.server_id.0);
        cid[SHARD_BYTE] = self.shard;
        // Without randomness no id could be issued at all; the OS source failing is fatal.
        getrandom::fill(&mut cid[RANDOM])
            .unwrap_or_else(|e| panic!("no randomness for a connection id: {e}"));
        let check = self.check(&cid[..CHECKED]);
        cid[CHECKED..].copy_from_slice(&check);
        ConnectionId::new(&cid)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != CID_LEN || cid[0] != FIRST_OCTET {
            return Err(InvalidCid);
        }
        let check = self.check(&cid[..CHECKED]);
        if hmac_eq(&check, &cid[CHECKED..]) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Constant-time comparison of two checks.
fn hmac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_carry_the_server_id_where_quic_lb_puts_it_and_check_across_nodes() {
        let key = [7u8; 32];
        let a: ServerId = "0x0123456789abcdef".parse().unwrap();
        let b: ServerId = "0xfedcba9876543210".parse().unwrap();
        let (mut node_a, node_b) = (RoutableCids::new(a, &key, 5), RoutableCids::new(b, &key, 0));
        let cid = node_a.generate_cid();
        assert_eq!(cid.len(), 16);
        assert_eq!(cid[0], 0x0f, "config rotation 0, 15 bytes follow");
        assert_eq!(
            &cid[1..9],
            &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        assert_eq!(cid[9], 5, "the issuing shard");
        assert_eq!(RoutableCids::server_id_of(&cid), Some(a));
        assert_ne!(node_a.generate_cid(), cid, "the nonce differs");
        // Any node of the cluster accepts the id (and so resets it); another key does not.
        assert!(node_b.validate(&cid).is_ok());
        assert!(RoutableCids::new(b, &[8u8; 32], 0).validate(&cid).is_err());
        let mut forged = cid;
        forged[15] ^= 1;
        assert!(node_b.validate(&forged).is_err());
        for covered in [8, 9] {
            let mut changed = cid;
            changed[covered] ^= 1;
            assert!(
                node_b.validate(&changed).is_err(),
                "the check covers byte {covered}"
            );
        }
        assert_eq!(a.to_string(), "0x0123456789abcdef");
    }

    #[test]
    fn server_ids_are_written_as_aws_takes_them() {
        for bad in [
            "0123456789abcdef",
            "0x0123456789ABCDEF",
            "0x0123",
            "0x0123456789abcdeg",
        ] {
            assert!(bad.parse::<ServerId>().is_err(), "{bad}");
        }
    }
}
