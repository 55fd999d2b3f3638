//! Reads of conversations: history pages, a user's conversation list, room counts, who may
//! follow whose presence, heads, memberships and markers, and what an operator's erasure of
//! an account reads (the conversations a user wrote in, the user's messages there); and the
//! account restrictions operators set.

use super::*;

/// What the entries of one page may charge in all ([`Entry::charge`] plus
/// [`ENTRY_OVERHEAD`] each): a page fits a server frame whatever its entries hold. Only
/// edited messages (which carry two bodies) can make a page of `MAX_PAGE` entries stop short.
pub const PAGE_BYTES: usize = chat_protocol::limits::MAX_SERVER_FRAME - 64 * 1024;

impl Store {
    /// A user's restriction (none: the default).
    ///
    /// # Errors
    /// RocksDB errors or a corrupt record.
    pub fn restriction(&self, user: UserId) -> Result<Restriction, Error> {
        Ok(self
            .get(Cf::Meta, &restriction_key(user))?
            .map(|v| Self::json(Cf::Meta, &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every account restriction.
    ///
    /// # Errors
    /// RocksDB errors or corrupt records.
    pub fn restrictions(&self) -> Result<Vec<(UserId, Restriction)>, Error> {
        let mut all = Vec::new();
        self.scan(
            Cf::Meta,
            RESTRICTION_PREFIX,
            RESTRICTION_PREFIX,
            |user, value| {
                let user = <[u8; 8]>::try_from(user).map(u64::from_be_bytes);
                match (user, serde_json::from_slice(value)) {
                    (Ok(user), Ok(restriction)) => all.push((UserId(user), restriction)),
                    _ => {
                        return Err(Error::Corrupt {
                            cf: Cf::Meta,
                            message: "bad account restriction".into(),
                        });
                    }
                }
                Ok(true)
            },
        )?;
        Ok(all)
    }

    /// A page of a conversation's log, at most `limit` entries and [`PAGE_BYTES`], none
    /// beyond `head`. Returns the entries in the requested order and whether more exist past
    /// the page.
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn history(
        &self,
        c: ConversationId,
        from: HistoryFrom,
        limit: usize,
        order: Order,
        head: Seq,
    ) -> Result<(Vec<Entry>, bool), Error> {
        let (start, forward) = page_start(from, head);
        let mut entries = Vec::with_capacity(limit.min(128));
        let (mut more, mut bytes) = (false, 0);
        if start.0 >= 1 && start <= head {
            self.walk(Cf::Log, &keys::log(c, start), forward, |key, value| {
                let in_page = keys::log_seq(c, key).is_some_and(|s| s <= head && s != Seq(0));
                if !in_page {
                    return Ok(false);
                }
                if entries.len() == limit {
                    more = true;
                    return Ok(false);
                }
                let entry = self.served(decode_entry(value)?)?;
                bytes += entry.charge() + ENTRY_OVERHEAD;
                if bytes > PAGE_BYTES && !entries.is_empty() {
                    more = true;
                    return Ok(false);
                }
                entries.push(entry);
                Ok(true)
            })?;
        }
        let ascending = forward;
        if (order == Order::OldestFirst) != ascending {
            entries.reverse();
        }
        Ok((entries, more))
    }

    /// A page of the replies to `root` (its thread), at most `limit` entries and
    /// [`PAGE_BYTES`], none beyond `head`; `from` and `order` as in [`Store::history`], over
    /// the replies' own sequence numbers. Returns the entries and whether more exist past
    /// the page.
    ///
    /// # Errors
    /// RocksDB errors, corrupt entries, or an index row whose entry is missing.
    pub fn thread(
        &self,
        c: ConversationId,
        root: Seq,
        from: HistoryFrom,
        limit: usize,
        order: Order,
        head: Seq,
    ) -> Result<(Vec<Entry>, bool), Error> {
        let (start, forward) = page_start(from, head);
        let mut seqs = Vec::with_capacity(limit.min(128));
        let mut more = false;
        if start.0 >= 1 && start <= head {
            self.walk(
                Cf::Threads,
                &keys::thread(c, root, start),
                forward,
                |key, _| {
                    let Some(seq) =
                        keys::thread_seq(c, root, key).filter(|s| *s <= head && *s != Seq(0))
                    else {
                        return Ok(false);
                    };
                    if seqs.len() == limit {
                        more = true;
                        return Ok(false);
                    }
                    seqs.push(seq);
                    Ok(true)
                },
            )?;
        }
        let log = self.cf(Cf::Log)?;
        let keys = seqs.iter().map(|seq| (&log, keys::log(c, *seq)));
        let (mut entries, mut bytes) = (Vec::with_capacity(seqs.len()), 0);
        for (seq, value) in seqs.iter().zip(self.db.multi_get_cf(keys)) {
            let Some(value) = value? else {
                return Err(Error::Corrupt {
                    cf: Cf::Threads,
                    message: format!(
                        "the reply {} of {} in {c:?} is not in the log",
                        seq.0, root.0
                    ),
                });
            };
            let entry = self.served(decode_entry(&value)?)?;
            bytes += entry.charge() + ENTRY_OVERHEAD;
            if bytes > PAGE_BYTES && !entries.is_empty() {
                more = true;
                break;
            }
            entries.push(entry);
        }
        if (order == Order::OldestFirst) != forward {
            entries.reverse();
        }
        Ok((entries, more))
    }

    /// An entry as clients get it: an erased edit's row does not hold its place in the chain
    /// (the delete that wrote it did not read the edit), so it is taken from `links`, with
    /// the edit's digest kept there.
    ///
    /// # Errors
    /// As [`Store::link`].
    pub(super) fn served(&self, mut entry: Entry) -> Result<Entry, Error> {
        if let Entry::Erased(erased) = &mut entry {
            let (link, digest) = self.link(erased.conversation, erased.seq)?;
            erased.chain = chat_protocol::Chain {
                link,
                kept: Some(digest),
            };
        }
        Ok(entry)
    }

    /// Walks `cf` from `start` (forward: from the first key at or after it; backward: from
    /// the last key at or before it), handing each key and value to `each` while it returns
    /// `true`.
    fn walk(
        &self,
        cf: Cf,
        start: &[u8],
        forward: bool,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let mut iter = self.db.raw_iterator_cf(self.cf(cf)?);
        if forward {
            iter.seek(start);
        } else {
            iter.seek_for_prev(start);
        }
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if !each(key, value)? {
                break;
            }
            if forward { iter.next() } else { iter.prev() }
        }
        iter.status()?;
        Ok(())
    }

    /// The conversations where `user` added an entry of its own (a send, an edit, a delete
    /// or a reaction: each keeps the user's recent op ids in `sender_ops`, rooms the user
    /// left included), for an operator's erasure of the account. Reads the whole column
    /// family.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>, Error> {
        let mut found: Vec<ConversationId> = Vec::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::SenderOps)?);
        iter.seek_to_first();
        let sender = user.0.to_be_bytes();
        while iter.valid() {
            let Some(key) = iter.key() else { break };
            let ours = key.get(keys::CONVERSATION_LEN..keys::CONVERSATION_LEN + 8) == Some(&sender);
            if let Some(c) = keys::parse_conversation(key)
                && ours
                && found.last() != Some(&c)
            {
                found.push(c);
            }
            iter.next();
        }
        iter.status()?;
        Ok(found)
    }

    /// The messages `user` sent in `c` that are not deleted, oldest first. Reads the whole
    /// log of `c`.
    ///
    /// # Errors
    /// RocksDB errors or corrupt entries.
    pub fn messages_of(&self, c: ConversationId, user: UserId) -> Result<Vec<Seq>, Error> {
        let mut seqs = Vec::new();
        self.walk(Cf::Log, &keys::log(c, Seq(1)), true, |key, value| {
            if keys::log_seq(c, key).is_none() {
                return Ok(false);
            }
            if let Entry::Message(m) = decode_entry(value)?
                && m.sender == user
                && m.deleted.is_none()
            {
                seqs.push(m.seq);
            }
            Ok(true)
        })?;
        Ok(seqs)
    }

    /// The stored entry `seq` of a conversation, if there is one.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt entry.
    pub fn entry(&self, c: ConversationId, seq: Seq) -> Result<Option<Entry>, Error> {
        self.get(Cf::Log, &keys::log(c, seq))?
            .map(|bytes| decode_entry(&bytes))
            .transpose()
    }

    /// A user's conversations after `after`, at most `limit`, and whether more exist.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn user_conversations(
        &self,
        user: UserId,
        after: Option<ConversationId>,
        limit: usize,
    ) -> Result<(Vec<ConversationId>, bool), Error> {
        let prefix = keys::id(user.0);
        let start = match after {
            Some(c) => {
                let mut k = keys::user_conversation(user, c).to_vec();
                k.push(0); // strictly after
                k
            }
            None => prefix.to_vec(),
        };
        let (mut out, mut more) = (Vec::new(), false);
        self.scan(Cf::UserConversations, &prefix, &start, |conversation, _| {
            if out.len() == limit {
                more = true;
                return Ok(false);
            }
            out.extend(keys::parse_conversation(conversation));
            Ok(true)
        })?;
        Ok((out, more))
    }

    /// How many rooms `user` is in, counting no further than `max`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn room_count(&self, user: UserId, max: u32) -> Result<u32, Error> {
        // Rooms sort after direct and notes conversations: start at the first room key.
        let prefix = keys::id(user.0);
        let start = keys::user_conversation(user, ConversationId::Room(RoomId(0)));
        let mut count = 0;
        self.scan(Cf::UserConversations, &prefix, &start, |_, _| {
            count += 1;
            Ok(count < max)
        })?;
        Ok(count)
    }

    /// The rooms whose `user_conversations` rows for `user` this store holds (at most
    /// `max_rooms_per_user` of them exist per user).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn rooms_of(&self, user: UserId) -> Result<Vec<RoomId>, Error> {
        // Rooms sort after direct and notes conversations: start at the first room key.
        let prefix = keys::id(user.0);
        let start = keys::user_conversation(user, ConversationId::Room(RoomId(0)));
        let mut rooms = Vec::new();
        self.scan(Cf::UserConversations, &prefix, &start, |suffix, _| {
            if let Some(ConversationId::Room(room)) = keys::parse_conversation(suffix) {
                rooms.push(room);
            }
            Ok(true)
        })?;
        Ok(rooms)
    }

    /// Whether `c` is in `user`'s conversation index.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn is_in(&self, user: UserId, c: ConversationId) -> Result<bool, Error> {
        Ok(self
            .get(Cf::UserConversations, &keys::user_conversation(user, c))?
            .is_some())
    }

    /// The last stored sequence number of a conversation.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn head(&self, c: ConversationId) -> Result<Seq, Error> {
        let mut iter = self.db.raw_iterator_cf(self.cf(Cf::Log)?);
        iter.seek_for_prev(keys::log(c, Seq(u64::MAX)));
        iter.status()?;
        Ok(iter
            .key()
            .and_then(|k| keys::log_seq(c, k))
            .unwrap_or(Seq(0)))
    }

    /// The state of `user` in `room`.
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn member_state(&self, room: RoomId, user: UserId) -> Result<Option<MemberState>, Error> {
        Ok(self
            .get(Cf::Members, &keys::member(room, user))?
            .and_then(|v| MemberState::from_byte(&v)))
    }

    /// Every member's (delivered, read) markers in a conversation.
    pub(super) fn conversation_marks(
        &self,
        c: ConversationId,
    ) -> Result<Vec<(UserId, Seq, Seq)>, Error> {
        let prefix = keys::conversation(c);
        let mut marks = Vec::new();
        self.scan(Cf::Markers, &prefix, &prefix, |user, value| {
            match (keys::parse_id(user), parse_marks(value)) {
                (Some(user), Some((delivered, read))) => {
                    marks.push((UserId(user), delivered, read))
                }
                _ => {
                    return Err(Error::Corrupt {
                        cf: Cf::Markers,
                        message: "bad marker entry".into(),
                    });
                }
            }
            Ok(true)
        })?;
        Ok(marks)
    }

    /// A user's (delivered, read) markers in a conversation; zeros when never set.
    ///
    /// # Errors
    /// RocksDB errors or a corrupt entry.
    pub fn marks(&self, c: ConversationId, user: UserId) -> Result<(Seq, Seq), Error> {
        match self.get(Cf::Markers, &keys::marker(c, user))? {
            None => Ok((Seq(0), Seq(0))),
            Some(value) => parse_marks(&value).ok_or_else(|| Error::Corrupt {
                cf: Cf::Markers,
                message: "bad marker entry".into(),
            }),
        }
    }
}

/// Where a page starts reading (the first sequence number it may hold) and whether it reads
/// forward, for a page `from` in a log whose newest entry is `head`.
fn page_start(from: HistoryFrom, head: Seq) -> (Seq, bool) {
    match from {
        HistoryFrom::Latest => (head, false),
        HistoryFrom::Before(s) => (Seq(s.0.saturating_sub(1).min(head.0)), false),
        HistoryFrom::After(s) => (s.next(), true),
    }
}
