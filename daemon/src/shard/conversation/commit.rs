//! The commit pipeline of a conversation: what one commit holds (the queued entries with
//! their links in the hash chain, the rows of the messages changes rewrote, the queued
//! writes and markers) and what its result does (acks and events once durable; on a failure,
//! every pending request answered and the conversation forgotten).

use super::*;

impl Conversation {
    /// Asks for one commit of the queued entries when none is in flight; sequence numbers are
    /// final from here.
    pub(super) fn submit(&mut self, out: &mut Vec<Effect>) {
        if self.committing_now() || (self.queued.is_empty() && self.queued_receipts.is_empty()) {
            return;
        }
        let mut batch = std::mem::take(&mut self.queued_batch);
        self.changed_rows(&mut batch);
        let mut encoded = Vec::with_capacity(256);
        for pending in &mut self.queued {
            // Its place in the chain, from the entry as appended; its row and its event
            // carry the link.
            pending.digest = chain::digest(&pending.entry);
            self.tip = chain::link(&self.tip, &pending.digest);
            pending.entry.chain_mut().link = self.tip;
            encoded.clear();
            pending.entry.encode_to(&mut encoded);
            let key = keys::log(self.id, pending.entry.seq());
            batch.put(Cf::Log, key.to_vec(), encoded.clone());
            batch.put(
                Cf::Links,
                key.to_vec(),
                encode_link(&self.tip, &pending.digest).to_vec(),
            );
        }
        self.committing = std::mem::take(&mut self.queued);
        self.committing_receipts = std::mem::take(&mut self.queued_receipts);
        out.push(Effect::Commit {
            conversation: self.id,
            batch,
        });
    }

    /// The commit came back.
    pub(super) fn committed(
        &mut self,
        result: Result<(), WriteError>,
        ctx: &Ctx<'_>,
        out: &mut Vec<Effect>,
    ) -> Fate {
        match result {
            Ok(()) => {
                for pending in std::mem::take(&mut self.committing) {
                    self.committed = pending.entry.seq();
                    send::publish(pending, out);
                }
                for (origin, receipt) in std::mem::take(&mut self.committing_receipts) {
                    reply(out, origin, Ok(Response::Ok));
                    out.push(Effect::Publish {
                        event: Event::Receipt(receipt),
                        audience: Arc::clone(&self.audience),
                        except: Some(origin.at),
                    });
                }
                self.changes_committed(ctx, out);
                Fate::Keep
            }
            Err(WriteError::Exists) => {
                // Only room creation claims a name; the room does not exist after all.
                for pending in std::mem::take(&mut self.committing) {
                    reply(out, pending.origin, refuse(ErrorCode::ROOM_NAME_TAKEN, ""));
                }
                self.fail_pending(ErrorCode::UNKNOWN_ROOM, "", out);
                Fate::Forget
            }
            Err(WriteError::Storage(e)) => {
                // The storage thread reports failing writes (once per interval, with a count).
                tracing::debug!(conversation = %self.id, error = %e, "commit failed");
                self.fail_pending(ErrorCode::UNAVAILABLE, "storage write failed", out);
                Fate::Forget
            }
        }
    }

    /// Answers every pending request with `code` (the conversation is about to be forgotten).
    pub(super) fn fail_pending(
        &mut self,
        code: ErrorCode,
        reason: &'static str,
        out: &mut Vec<Effect>,
    ) {
        let refusal = Refusal { code, reason };
        for pending in self.committing.drain(..).chain(self.queued.drain(..)) {
            for origin in std::iter::once(pending.origin).chain(pending.waiters) {
                reply(out, origin, Err(refusal));
            }
        }
        let receipts = self.committing_receipts.drain(..);
        for (origin, _) in receipts.chain(self.queued_receipts.drain(..)) {
            reply(out, origin, Err(refusal));
        }
        for (origin, _) in self.senders.take_parked() {
            reply(out, origin, Err(refusal));
        }
        self.fail_changes(refusal, out);
        self.queued_batch = Batch::default();
    }
}
