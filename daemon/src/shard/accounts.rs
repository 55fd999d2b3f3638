//! Accounts: register, log in, and authenticate a connection with a token.
//!
//! Password hashing (argon2id) and account reads run on the read pool; account creation goes
//! through the storage thread with the name claimed by `unless_exists`, so two registrations of
//! one name cannot both succeed. A valid token for a name without an account creates the
//! account (without a password): the app backend that minted it vouches for the user.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chat_protocol::{ErrorCode, RequestId, Response, Timestamp, TokenGrant, UserId};

use super::{
    ConnId, Origin, Shard, ShardMsg, Shared, Written, error, error_body, now_ms, response,
};
use crate::store::writer::{Batch, WriteError};
use crate::store::{Cf, UserRecord, keys, to_json};

/// A successful authentication.
pub(crate) struct Authenticated {
    pub(crate) user: UserId,
    pub(crate) name: String,
    /// Token expiry, seconds since the epoch.
    pub(crate) expires_at: u64,
    /// The token's `iat`, checked against the account's restriction when the session is set.
    pub(crate) issued_at: Option<u64>,
    /// Where this node's orders from other nodes stood before the restriction was read
    /// (`crate::peer::Peers::orders`): the later ones are checked as the session is set.
    pub(crate) mark: u64,
}

/// An account write in flight.
pub(crate) enum AccountWrite {
    /// `Register`: answer with a token.
    Register { origin: Origin, record: UserRecord },
    /// First use of a backend-minted token: finish authenticating.
    Provision {
        shard: usize,
        conn: ConnId,
        request: Option<RequestId>,
        name: String,
        expires_at: u64,
        issued_at: Option<u64>,
        mark: u64,
    },
}

impl AccountWrite {
    /// The account's name: its partition claims it.
    pub(crate) fn name(&self) -> &str {
        match self {
            AccountWrite::Register { record, .. } => &record.name,
            AccountWrite::Provision { name, .. } => name,
        }
    }
}

/// An account's restriction, on a pool thread: the shards' copy for an account this node
/// holds, read from the node that holds it for another.
fn restriction_of(
    shared: &Shared,
    store: &crate::store::Stores,
    user: UserId,
) -> Result<crate::store::Restriction, crate::store::Error> {
    if store.holds(shared.partitions.of_id(user.0)) {
        Ok(shared.restriction(user))
    } else {
        store.restriction(user)
    }
}

/// A token for `user`, issued no earlier than `tokens_from` (the account's revocation, as
/// its restriction says), or it would be refused.
fn grant(shared: &Shared, user: UserId, name: &str, tokens_from: u64) -> TokenGrant {
    let now = crate::unix_now().max(tokens_from);
    let expires_at = now.saturating_add(shared.config().auth.token_ttl_secs);
    TokenGrant {
        user,
        token: shared.keys.load().mint(name, now, expires_at),
        expires_at: Timestamp(expires_at.saturating_mul(1000)),
    }
}

/// Authenticates connection `conn` of this shard with `token`; the result comes back as
/// `ShardMsg::Authenticated`.
pub(crate) fn authenticate(shard: &Shard, conn: ConnId, request: Option<RequestId>, token: &str) {
    let claims = match shard.shared.keys.load().verify(token, crate::unix_now()) {
        Ok(claims) => claims,
        Err(e) => {
            let result = Err(error_body(e.code(), ""));
            return shard.send(
                shard.id,
                ShardMsg::Authenticated {
                    conn,
                    request,
                    result,
                },
            );
        }
    };
    let shared = Arc::clone(&shard.shared);
    let id = shard.id;
    let mark = shared.peers.orders.mark();
    let submitted = shard.shared.reads.submit(move |store| {
        // The restriction is checked again on the connection's shard as the session is set
        // (`conn::authenticated`): an operator's order may come in between.
        let found = store
            .user_by_name(&claims.user)
            .and_then(|record| match record {
                Some(record) => {
                    let refused =
                        restriction_of(&shared, store, record.id)?.refuses(claims.issued_at);
                    Ok(Some((record, refused)))
                }
                None => Ok(None),
            });
        let result = match found {
            Ok(Some((_, Some(code)))) => Err(error_body(code, "")),
            Ok(Some((record, None))) => Ok(Authenticated {
                user: record.id,
                name: record.name,
                expires_at: claims.expires_at,
                issued_at: claims.issued_at,
                mark,
            }),
            Ok(None) => {
                return provision(&shared, store, id, conn, request, claims, mark);
            }
            // A cluster's node that does not hold the name's partition (standing by) refuses
            // the hello without calling it a failure.
            Err(crate::store::Error::NotHere(_)) => Err(error_body(ErrorCode::UNAVAILABLE, "")),
            Err(e) => {
                crate::logging::throttled!(error, error = %e, "account lookup failed");
                Err(error_body(ErrorCode::UNAVAILABLE, ""))
            }
        };
        shared.push_blocking(
            id,
            ShardMsg::Authenticated {
                conn,
                request,
                result,
            },
        );
    });
    if !submitted {
        let result = Err(error_body(ErrorCode::OVERLOADED, ""));
        shard.send(
            shard.id,
            ShardMsg::Authenticated {
                conn,
                request,
                result,
            },
        );
    }
}

/// Creates the account of a token's user (on the read pool thread).
fn provision(
    shared: &Arc<Shared>,
    store: &crate::store::Stores,
    shard: usize,
    conn: ConnId,
    request: Option<RequestId>,
    claims: crate::token::Claims,
    mark: u64,
) {
    let name = claims.user;
    if shared.peers.claims_elsewhere(&name) {
        // Created by the node that holds the name's partition.
        let created = match shared.peers.create_account(&name, None, now_ms()) {
            // Taken: another connection provisioned it first.
            Ok(None) => store.user_by_name(&name),
            created => created,
        };
        let result = match created {
            Ok(Some(record)) => Ok(Authenticated {
                user: record.id,
                name: record.name,
                expires_at: claims.expires_at,
                issued_at: claims.issued_at,
                mark,
            }),
            Ok(None) => Err(error_body(ErrorCode::UNAVAILABLE, "")),
            Err(e) => {
                crate::logging::throttled!(error, error = %e, "account creation on another node failed");
                Err(error_body(ErrorCode::UNAVAILABLE, ""))
            }
        };
        return shared.push_blocking(
            shard,
            ShardMsg::Authenticated {
                conn,
                request,
                result,
            },
        );
    }
    let record = UserRecord {
        id: shared.ids.user(&name),
        name: name.clone(),
        password_hash: None,
        created_at: now_ms(),
    };
    let batch = account_batch(shared, &record);
    let write = AccountWrite::Provision {
        shard,
        conn,
        request,
        name,
        expires_at: claims.expires_at,
        issued_at: claims.issued_at,
        mark,
    };
    if let Err(refused) = shared.commit(shard, batch, Written::Account(write)) {
        tracing::debug!(error = %refused, "an account write was refused");
        let result = Err(error_body(ErrorCode::OVERLOADED, ""));
        shared.push_blocking(
            shard,
            ShardMsg::Authenticated {
                conn,
                request,
                result,
            },
        );
    }
}

pub(crate) fn account_batch(shared: &Shared, record: &UserRecord) -> Batch {
    let mut batch = Batch {
        unless_exists: Some((Cf::UserNames, record.name.clone().into_bytes())),
        ..Batch::default()
    };
    batch.put(
        Cf::UserNames,
        record.name.clone().into_bytes(),
        keys::id(record.id.0).to_vec(),
    );
    batch.put(Cf::Users, keys::id(record.id.0).to_vec(), to_json(record));
    if shared.config().bridge.enabled() {
        batch.event(crate::store::outbox::Event::UserRegistered {
            user: record.id,
            name: record.name.clone(),
        });
    }
    batch
}

/// An account write of this shard finished.
pub(crate) fn account_written(shard: &Shard, write: AccountWrite, result: Result<(), WriteError>) {
    let shared = &shard.shared;
    match write {
        AccountWrite::Register { origin, record } => {
            let frame = match result {
                Ok(()) => response(
                    origin.request,
                    Response::Token(grant(shared, record.id, &record.name, 0)),
                ),
                Err(WriteError::Exists) => error(origin.request, ErrorCode::USERNAME_TAKEN, ""),
                Err(WriteError::Storage(e)) => {
                    crate::logging::throttled!(error, error = %e, "account write failed");
                    error(origin.request, ErrorCode::UNAVAILABLE, "")
                }
            };
            shard.reply(&origin, frame);
        }
        AccountWrite::Provision {
            shard: at,
            conn,
            request,
            name,
            expires_at,
            issued_at,
            mark,
        } => {
            let result = match result {
                Ok(()) | Err(WriteError::Exists) => {
                    // Exists: another connection provisioned it first; read it on the pool.
                    let shared2 = Arc::clone(shared);
                    let submitted = shared.reads.submit(move |store| {
                        let result = match store.user_by_name(&name) {
                            Ok(Some(r)) => Ok(Authenticated {
                                user: r.id,
                                name: r.name,
                                expires_at,
                                issued_at,
                                mark,
                            }),
                            _ => Err(error_body(ErrorCode::UNAVAILABLE, "")),
                        };
                        shared2.push_blocking(
                            at,
                            ShardMsg::Authenticated {
                                conn,
                                request,
                                result,
                            },
                        );
                    });
                    if submitted {
                        return;
                    }
                    Err(error_body(ErrorCode::OVERLOADED, ""))
                }
                Err(WriteError::Storage(e)) => {
                    crate::logging::throttled!(error, error = %e, "account write failed");
                    Err(error_body(ErrorCode::UNAVAILABLE, ""))
                }
            };
            shard.send(
                at,
                ShardMsg::Authenticated {
                    conn,
                    request,
                    result,
                },
            );
        }
    }
}

/// `Register`: validates, then hashes and stores on the pool.
pub(crate) fn register(shard: &Shard, origin: Origin, name: String, password: String) {
    if let Err(code) = chat_protocol::names::check_user_name(&name)
        .and(chat_protocol::names::check_password(&password))
    {
        return shard.reply(&origin, error(origin.request, code, ""));
    }
    let shared = Arc::clone(&shard.shared);
    let submitted = shard.shared.passwords.submit(move |_store| {
        let mut salt_bytes = [0u8; 16];
        let salt = getrandom::fill(&mut salt_bytes)
            .map_err(|e| e.to_string())
            .and_then(|()| SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string()));
        let hashed = salt.and_then(|salt| {
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        });
        let hash = match hashed {
            Ok(hash) => hash,
            Err(e) => {
                crate::logging::throttled!(error, error = %e, "password hashing failed");
                return shared
                    .reply_blocking(&origin, error(origin.request, ErrorCode::INTERNAL, ""));
            }
        };
        if shared.peers.claims_elsewhere(&name) {
            // Created by the node that holds the name's partition.
            let frame = match shared.peers.create_account(&name, Some(hash), now_ms()) {
                Ok(Some(record)) => response(
                    origin.request,
                    Response::Token(grant(&shared, record.id, &record.name, 0)),
                ),
                Ok(None) => error(origin.request, ErrorCode::USERNAME_TAKEN, ""),
                Err(e) => {
                    crate::logging::throttled!(error, error = %e, "account creation on another node failed");
                    error(origin.request, ErrorCode::UNAVAILABLE, "")
                }
            };
            return shared.reply_blocking(&origin, frame);
        }
        let record = UserRecord {
            id: shared.ids.user(&name),
            name,
            password_hash: Some(hash),
            created_at: now_ms(),
        };
        let batch = account_batch(&shared, &record);
        let write = Written::Account(AccountWrite::Register { origin, record });
        if let Err(refused) = shared.commit(origin.at.shard, batch, write) {
            tracing::debug!(error = %refused, "an account write was refused");
            shared.reply_blocking(&origin, error(origin.request, ErrorCode::OVERLOADED, ""));
        }
    });
    if !submitted {
        shard.reply(&origin, error(origin.request, ErrorCode::OVERLOADED, ""));
    }
}

/// `Login`: checks the password on the pool and answers with a token.
pub(crate) fn login(shard: &Shard, origin: Origin, name: String, password: String) {
    let shared = Arc::clone(&shard.shared);
    let submitted = shard.shared.passwords.submit(move |store| {
        let frame = match store.user_by_name(&name) {
            Ok(None) => error(origin.request, ErrorCode::UNKNOWN_USER, ""),
            Ok(Some(record)) => match record.password_hash.as_deref().map(PasswordHash::new) {
                // Said only to who knows the password.
                Some(Ok(hash)) if Argon2::default().verify_password(password.as_bytes(), &hash).is_ok() => {
                    match restriction_of(&shared, store, record.id) {
                        Err(e) => {
                            crate::logging::throttled!(error, error = %e, "account lookup failed");
                            error(origin.request, ErrorCode::UNAVAILABLE, "")
                        }
                        Ok(r) if r.disabled => error(origin.request, ErrorCode::ACCOUNT_DISABLED, ""),
                        Ok(r) => response(origin.request, Response::Token(grant(&shared, record.id, &record.name, r.tokens_from))),
                    }
                }
                Some(Ok(_)) => error(origin.request, ErrorCode::WRONG_PASSWORD, ""),
                None => error(origin.request, ErrorCode::WRONG_PASSWORD, "this account signs in with tokens from its app, not a password"),
                Some(Err(e)) => {
                    tracing::error!(error = %e, user = %record.id, "stored password hash does not parse");
                    error(origin.request, ErrorCode::INTERNAL, "")
                }
            },
            Err(e) => {
                crate::logging::throttled!(error, error = %e, "account lookup failed");
                error(origin.request, ErrorCode::UNAVAILABLE, "")
            }
        };
        shared.reply_blocking(&origin, frame);
    });
    if !submitted {
        shard.reply(&origin, error(origin.request, ErrorCode::OVERLOADED, ""));
    }
}
