//! What the cluster secret keys on a node's QUIC endpoints, and how a node takes a second,
//! accepted secret while the cluster rotates it (docs/OPERATIONS.md, section 9).
//!
//! One secret gives two keys: the stateless reset key (HMAC-SHA256 over a connection id)
//! and the connection id key, `HMAC(secret, "connection ids")`, which checks the ids the
//! cluster issues ([`RoutableCids`], or quinn's 8-byte hashed ids on a node without a
//! server id). With `cluster.accepted_secret` too, a node issues ids and reset tokens under
//! `cluster.secret` only, accepts ids checked by either key, and resets a connection with
//! the token of the key its id was checked by. So while some nodes still issue under the
//! old secret and others under the new one, any node resets any node's clients with the
//! token their connection was given.

use hmac::Mac as _;
use quinn::ConnectionIdGenerator;
use quinn_proto::{ConnectionId, InvalidCid};
use sha2::Sha256;

use super::{RoutableCids, ServerId};

type Mac = hmac::Hmac<Sha256>;

/// The keys of one secret.
struct SecretKeys {
    /// The stateless reset key.
    reset: Mac,
    /// The connection id key.
    ids: [u8; 32],
    /// Checks ids issued under this secret, whichever node and shard issued them.
    check: Box<dyn ConnectionIdGenerator>,
}

impl SecretKeys {
    fn new(secret: &[u8], server_id: Option<ServerId>) -> SecretKeys {
        let reset = <Mac as hmac::Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        // HMAC(secret, "connection ids"), so the id key reveals nothing of the reset key.
        let mut ids = [0u8; 32];
        let mut mac = reset.clone();
        mac.update(b"connection ids");
        ids.copy_from_slice(&mac.finalize().into_bytes());
        SecretKeys {
            reset,
            ids,
            check: generator(&ids, server_id, 0),
        }
    }

    fn generator(&self, server_id: Option<ServerId>, shard: u8) -> Box<dyn ConnectionIdGenerator> {
        generator(&self.ids, server_id, shard)
    }

    /// Whether `id` was issued under this secret.
    fn checks(&self, id: &[u8]) -> bool {
        id.len() == self.check.cid_len() && self.check.validate(&ConnectionId::new(id)).is_ok()
    }
}

/// A generator of ids for `shard` under the id key `ids`: routable with a server id; else
/// quinn's 8-byte hashed ids, keyed by the id key's first 8 bytes.
fn generator(
    ids: &[u8; 32],
    server_id: Option<ServerId>,
    shard: u8,
) -> Box<dyn ConnectionIdGenerator> {
    match server_id {
        Some(server_id) => Box::new(RoutableCids::new(server_id, ids, shard)),
        None => {
            let mut short = [0u8; 8];
            short.copy_from_slice(&ids[..8]);
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(
                u64::from_le_bytes(short),
            ))
        }
    }
}

/// A node's endpoint keys: the signing secret's and, during a rotation, the accepted one's.
/// Quinn's reset key ([`quinn::crypto::HmacKey`]); [`Keys::ids`] gives the id generators.
pub(super) struct Keys {
    signs: SecretKeys,
    accepted: Option<SecretKeys>,
    server_id: Option<ServerId>,
}

impl Keys {
    /// The keys of `secret` and of `accepted` (a second secret this node accepts but does
    /// not issue under), for ids routable to `server_id` when it is set.
    pub(super) fn new(secret: &[u8], accepted: Option<&[u8]>, server_id: Option<ServerId>) -> Keys {
        Keys {
            signs: SecretKeys::new(secret, server_id),
            accepted: accepted.map(|secret| SecretKeys::new(secret, server_id)),
            server_id,
        }
    }

    /// The id generator of `shard`: issues under the signing secret and accepts ids checked
    /// by either key.
    pub(super) fn ids(&self, shard: u8) -> Box<dyn ConnectionIdGenerator> {
        let signs = self.signs.generator(self.server_id, shard);
        match &self.accepted {
            None => signs,
            Some(accepted) => Box::new(EitherIds {
                signs,
                accepted: accepted.generator(self.server_id, shard),
            }),
        }
    }

    /// The reset key for `id`: the accepted secret's when only its key checks the id (a
    /// connection another node gave a token of that key), else the signing secret's.
    fn reset_key(&self, id: &[u8]) -> &Mac {
        match &self.accepted {
            Some(accepted) if !self.signs.checks(id) && accepted.checks(id) => &accepted.reset,
            _ => &self.signs.reset,
        }
    }
}

impl quinn::crypto::HmacKey for Keys {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mut mac = self.reset_key(data).clone();
        mac.update(data);
        let tag = mac.finalize().into_bytes();
        let n = signature_out.len().min(tag.len());
        signature_out[..n].copy_from_slice(&tag[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let mut mac = self.reset_key(data).clone();
        mac.update(data);
        mac.verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Issues ids under the signing secret; accepts ids checked by it or by the accepted one.
struct EitherIds {
    signs: Box<dyn ConnectionIdGenerator>,
    accepted: Box<dyn ConnectionIdGenerator>,
}

impl ConnectionIdGenerator for EitherIds {
    fn generate_cid(&mut self) -> ConnectionId {
        self.signs.generate_cid()
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.signs
            .validate(cid)
            .or_else(|_| self.accepted.validate(cid))
    }

    fn cid_len(&self) -> usize {
        self.signs.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        self.signs.cid_lifetime()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use quinn::crypto::HmacKey as _;

    fn token(keys: &Keys, id: &[u8]) -> [u8; 16] {
        let mut token = [0u8; 16];
        keys.sign(id, &mut token);
        token
    }

    /// Old ids stay checked and reset with their own token on a node that signs with the new
    /// secret and accepts the old one, and the other way round; a node that knows only one
    /// secret checks only its ids.
    #[test]
    fn a_node_accepting_a_second_secret_checks_and_resets_ids_of_either() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        for server_id in [None, Some("0x00000000000000a1".parse().unwrap())] {
            let before = Keys::new(&old, None, server_id);
            let rotating = Keys::new(&old, Some(&new), server_id);
            let after = Keys::new(&new, Some(&old), server_id);
            let done = Keys::new(&new, None, server_id);
            let old_id = before.ids(3).generate_cid();
            let new_id = done.ids(3).generate_cid();
            assert!(
                rotating.signs.checks(&rotating.ids(0).generate_cid()),
                "issued under the signing secret"
            );
            for keys in [&rotating, &after] {
                for id in [&old_id, &new_id] {
                    assert!(keys.ids(0).validate(id).is_ok(), "{server_id:?}");
                }
                assert_eq!(token(keys, &old_id), token(&before, &old_id));
                assert_eq!(token(keys, &new_id), token(&done, &new_id));
            }
            assert!(before.ids(0).validate(&new_id).is_err());
            assert!(done.ids(0).validate(&old_id).is_err());
            assert_ne!(token(&done, &old_id), token(&before, &old_id));
            // An id neither key checks (noise) gets the signing key's token.
            let noise = [0x0fu8; 16];
            assert_eq!(token(&after, &noise), token(&done, &noise));
        }
    }
}
