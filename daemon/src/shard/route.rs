//! Where a conversation's input goes: an owner shard of this node, or the node that holds the
//! conversation's partition (`crate::peer`).

use super::*;

impl Shared {
    /// Passes `op` to the owner of `conversation` from a pool thread (it may wait for a
    /// full inbox): a shard here, or the node that holds its partition.
    pub(crate) fn to_owner_blocking(&self, conversation: ConversationId, op: conversation::Input) {
        if let Some(op) = self.forwarded(conversation, op) {
            self.push_blocking(
                self.owner_of(conversation),
                ShardMsg::Conversation { conversation, op },
            );
        }
    }

    /// Forwards `op` to another node when its partition is held there: `None` once it is
    /// forwarded or refused (and the refusal answered, from a pool thread), the input back
    /// otherwise.
    fn forwarded(
        &self,
        conversation: ConversationId,
        op: conversation::Input,
    ) -> Option<conversation::Input> {
        match self.peers.forward(conversation, op) {
            Ok(op) => op,
            Err(refused) => {
                if let Some((origin, frame)) = refused.answer() {
                    self.reply_blocking(&origin, frame);
                }
                None
            }
        }
    }
}

impl Shard {
    /// Passes `op` to the owner of `conversation`: a shard here, or the node that holds its
    /// partition.
    pub(crate) fn to_owner(&self, conversation: ConversationId, op: conversation::Input) {
        let op = match self.shared.peers.forward(conversation, op) {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(refused) => {
                if let Some((origin, frame)) = refused.answer() {
                    self.reply(&origin, frame);
                }
                return;
            }
        };
        self.send(
            self.shared.owner_of(conversation),
            ShardMsg::Conversation { conversation, op },
        );
    }
}
