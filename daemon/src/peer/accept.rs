//! The links other nodes dialed to this one: each proves itself, is registered for the
//! answers and the feed ([`super::Inbound`]), and has its forwarded requests given to the
//! owner shards here and its calls answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chat_protocol::{ConversationId, ErrorCode, RequestId};
use tokio::sync::mpsc;

use super::link::{exported, hear_hello, say_hello};
use super::wire::{self, Answer, Call, Refused, Up};
use super::{Inbound, LINK_QUEUE, Queued, push};
use crate::shard::conversation::Input;
use crate::shard::{Link, ShardMsg, Shared, error};

/// Connections that have not proven themselves yet, at most: beyond, new ones are refused.
const MAX_UNPROVEN: usize = 64;

/// Counts a connection among the unproven until it proves itself or ends.
struct Unproven(Arc<AtomicUsize>);

impl Drop for Unproven {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) async fn accept(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    secrets: Arc<wire::Secrets>,
) {
    let unproven = Arc::new(AtomicUsize::new(0));
    while let Some(incoming) = endpoint.accept().await {
        if unproven.fetch_add(1, Ordering::AcqRel) >= MAX_UNPROVEN {
            unproven.fetch_sub(1, Ordering::AcqRel);
            incoming.refuse();
            continue;
        }
        let counted = Unproven(Arc::clone(&unproven));
        let shared = Arc::clone(&shared);
        let secrets = Arc::clone(&secrets);
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(e) => return tracing::debug!(error = %e, "a peer's handshake failed"),
            };
            let remote = connection.remote_address();
            if let Err(e) = serve_accepted(&shared, connection, &secrets, counted).await {
                tracing::warn!(%remote, error = %e, "a peer's link was refused or failed");
            }
        });
    }
}

/// A link another node dialed, while it is served: registered for the answers and the
/// feed; unregistered when it ends.
struct Accepted {
    shared: Arc<Shared>,
    link: Arc<Inbound>,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        let peers = &self.shared.peers;
        let mut links = Vec::clone(&peers.inbound.load());
        links.retain(|l| !Arc::ptr_eq(l, &self.link));
        peers.inbound.store(Arc::new(links));
    }
}

async fn serve_accepted(
    shared: &Arc<Shared>,
    connection: quinn::Connection,
    secrets: &wire::Secrets,
    unproven: Unproven,
) -> Result<(), String> {
    let ekm = exported(&connection)?;
    let (mut up, node) = hear_hello(&connection, secrets, "dialer", &ekm).await?;
    let mut down = connection.open_uni().await.map_err(|e| e.to_string())?;
    // Registered before the hello goes: the dialing node has its sessions catch up once it
    // has the hello, and every event from then on is in this link's feed.
    drop(unproven);
    let (tx, mut rx) = mpsc::channel::<Queued>(LINK_QUEUE);
    let link = Link(shared.peers.next_link.fetch_add(1, Ordering::Relaxed));
    let queued = Arc::new(AtomicUsize::new(0));
    let accepted = Accepted {
        shared: Arc::clone(shared),
        link: Arc::new(Inbound {
            link,
            tx,
            queued: Arc::clone(&queued),
            connection: connection.clone(),
        }),
    };
    let mut links = Vec::clone(&shared.peers.inbound.load());
    links.push(Arc::clone(&accepted.link));
    shared.peers.inbound.store(Arc::new(links));
    // Which users have a device here: each registry shard reports its own, then its
    // changes follow on the link in order.
    for shard in 0..shared.inboxes.len() {
        let report = crate::shard::registry::Op::ReportTo { link };
        push(shared, shard, ShardMsg::Registry(report)).await;
    }
    say_hello(shared, &mut down, secrets, "listener", &ekm).await?;
    tracing::info!(node, "a peer linked to this node");
    let writing = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            queued.fetch_sub(message.bytes(), Ordering::AcqRel);
            let Ok(bytes) = wire::encode(&message.into_down()) else {
                continue;
            };
            if down.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let calls = tokio::spawn({
        let (shared, connection) = (Arc::clone(shared), connection.clone());
        async move {
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(answer_call(Arc::clone(&shared), send, recv));
            }
        }
    });
    let result = loop {
        match wire::read::<Up>(&mut up).await {
            Ok(Some(message)) => arrived(shared, link, &accepted.link, message).await,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    calls.abort();
    writing.abort();
    connection.close(quinn::VarInt::from_u32(0), b"link ended");
    drop(accepted);
    result
}

/// A forwarded request arrived on `link`: to the conversation's owner shard here, or
/// answered `UNAVAILABLE` when this node does not hold its partition (any more).
async fn arrived(shared: &Shared, link: Link, inbound: &Inbound, message: Up) {
    let refuse = |from: wire::Whence| {
        inbound.send(Queued::Reply {
            shard: from.shard,
            conn: from.conn,
            request: from.request,
            frame: error(
                RequestId(from.request),
                ErrorCode::UNAVAILABLE,
                "the conversation's partition moved",
            ),
        });
    };
    let (conversation, op) = match message {
        Up::Conversation {
            conversation,
            from,
            asked,
        } => {
            if !shared
                .peers
                .stores
                .holds(shared.partitions.of_conversation(conversation))
            {
                if !matches!(asked, wire::Asked::Typing(_)) {
                    refuse(from);
                }
                return;
            }
            (conversation, asked.input(from.origin(link)))
        }
        Up::Create {
            from,
            name,
            invite_only,
        } => {
            if !shared.peers.stores.holds(shared.partitions.of_name(&name)) {
                return refuse(from);
            }
            let conversation = ConversationId::Room(shared.ids.room(&name));
            let origin = from.origin(link);
            let op = Input::Create {
                origin,
                name,
                invite_only,
            };
            (conversation, op)
        }
    };
    let owner = shared.owner_of(conversation);
    push(shared, owner, ShardMsg::Conversation { conversation, op }).await;
}

/// Runs `read` of this node's stores on the peer runtime's blocking threads, not the read
/// pool (its threads may be waiting for this node's peers themselves); a partition not held
/// here is refused `NotHere`.
pub(super) async fn read_here<T: Send + 'static>(
    shared: &Shared,
    read: impl FnOnce(&crate::store::Stores) -> Result<T, crate::store::Error> + Send + 'static,
) -> Result<T, Refused> {
    let stores = shared.peers.stores.clone();
    match tokio::task::spawn_blocking(move || read(&stores)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(crate::store::Error::NotHere(_))) => Err(Refused::NotHere),
        Ok(Err(e)) => Err(Refused::Failed(e.to_string())),
        Err(_) => Err(Refused::Failed("the read was dropped".into())),
    }
}

/// Answers one call.
async fn answer_call(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Ok(Some(call)) = wire::read::<Call>(&mut recv).await else {
        return;
    };
    let answer: Answer = match call {
        Call::Read { partition, read } => {
            let p = usize::try_from(partition).unwrap_or(usize::MAX);
            read_here(&shared, move |stores| {
                stores.partition(p).and_then(|store| read.run(&store))
            })
            .await
        }
        Call::CreateAccount {
            name,
            password_hash,
            created_at,
        } => create_account(&shared, name, password_hash, created_at).await,
        Call::Act {
            name,
            action,
            device,
        } => shared.peers.acted(name, action, device).await,
        Call::Order(order) => super::Peers::ordered(&shared, order).await,
        Call::Connections { user, limit } => super::Peers::listed(&shared, user, limit).await,
        Call::Status => wire::answer(crate::admin::api::summary(&shared).to_string()),
        Call::Conversation { conversation } => read_here(&shared, move |stores| {
            crate::admin::api::conversation_here(stores, conversation, false)
        })
        .await
        .and_then(|found| wire::answer(found.map(|json| json.to_string()))),
        Call::Erase { conversation, user } => {
            super::Peers::erased(&shared, conversation, user).await
        }
    };
    if let Ok(bytes) = wire::encode(&answer) {
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
    }
}

/// Creates an account whose name this node's partition claims, for another node.
async fn create_account(
    shared: &Arc<Shared>,
    name: String,
    password_hash: Option<String>,
    created_at: chat_protocol::Timestamp,
) -> Answer {
    let p = shared.partitions.of_name(&name);
    if !shared.peers.stores.holds(p) {
        return Err(Refused::NotHere);
    }
    let record = crate::store::UserRecord {
        id: shared.ids.user(&name),
        name,
        password_hash,
        created_at,
    };
    let batch = crate::shard::accounts::account_batch(shared, &record);
    let (reply, written) = tokio::sync::oneshot::channel();
    let done = crate::shard::Done::Admin {
        shared: Arc::clone(shared),
        restriction: None,
        reply,
    };
    if let Err((_, held)) = shared.writer.submit(p, batch, done) {
        return Err(if held {
            Refused::Busy
        } else {
            Refused::NotHere
        });
    }
    match written.await {
        Ok(Ok(())) => wire::answer(&record),
        Ok(Err(crate::store::writer::WriteError::Exists)) => Err(Refused::Exists),
        Ok(Err(crate::store::writer::WriteError::Storage(e))) => Err(Refused::Failed(e)),
        Err(_) => Err(Refused::Failed("the write was dropped".into())),
    }
}
