//! Replies whose instance died: each reply in flight has a lease its
//! instance renews (`redis.rs`). Every instance looks, about once a second,
//! for replies whose lease lapsed; one of them claims each such reply, the
//! caller stores the user's message (as for any failed turn, where that turn
//! would have: at the end, on a new branch for an edit, nowhere for a
//! regenerate), and the
//! reply ends with `error` for every tab watching it, on any instance.

use std::sync::Arc;

use super::event::{interrupted, BranchPoint, Logged, ReplyEvent};
use super::log::Envelope;
use super::ReplyHub;
use crate::domain::{ConversationId, UserId};

/// A reply whose instance stopped renewing its lease, claimed by this one.
#[derive(Debug)]
pub struct LapsedReply {
    pub user: UserId,
    pub conversation: ConversationId,
    /// The user's message the reply answered.
    pub message: String,
    /// Where it goes, for a branch turn (edit, regenerate); `None`: at the end.
    pub branch: Option<BranchPoint>,
    reply: Arc<str>,
}

impl ReplyHub {
    /// The replies in flight on another instance that stopped renewing
    /// their lease, each claimed by this instance only (none in memory mode).
    pub async fn claim_lapsed(&self) -> Vec<LapsedReply> {
        let Some(redis) = &self.redis else {
            return Vec::new();
        };
        let claimed = match redis.claim_lapsed(&self.instance).await {
            Ok(claimed) => claimed,
            Err(err) => {
                tracing::debug!(error = %err, "could not look for lapsed replies");
                return Vec::new();
            }
        };
        let mut lapsed = Vec::new();
        for in_flight in claimed {
            let (Ok(conversation), user) = (
                ConversationId::parse(&in_flight.conversation),
                UserId::from_stored(in_flight.user),
            ) else {
                continue;
            };
            let logged = match self.log.read(&user, &conversation).await {
                Ok(logged) => logged,
                Err(err) => {
                    tracing::warn!(error = %err, "could not read a lapsed reply's log");
                    continue;
                }
            };
            // Ended after all (its end raced the look), or replaced by a
            // newer reply: nothing to do.
            let current = logged.first().filter(|l| *l.reply == *in_flight.reply);
            let ended = logged.last().is_some_and(|l| l.event.is_final());
            let Some(Logged {
                event: ReplyEvent::Started { message, branch },
                ..
            }) = current.filter(|_| !ended)
            else {
                continue;
            };
            tracing::warn!(conversation = %conversation, "a reply's instance stopped renewing its lease; ending the reply");
            lapsed.push(LapsedReply {
                user,
                conversation,
                message: message.clone(),
                branch: *branch,
                reply: Arc::from(in_flight.reply),
            });
        }
        lapsed
    }

    /// Ends a lapsed reply with `error` (the reply was interrupted) in its
    /// log and for every tab watching it; call once its user's message is
    /// stored.
    pub async fn interrupt(self: &Arc<Self>, lapsed: &LapsedReply) {
        let logged = Logged {
            reply: lapsed.reply.clone(),
            origin: None,
            event: interrupted(),
        };
        let envelope = Envelope {
            instance: Arc::from(self.instance.as_str()),
            user: Arc::from(lapsed.user.as_ref()),
            conversation: Arc::from(lapsed.conversation.as_ref()),
            logged: logged.clone(),
        };
        if let Err(err) = self.log.record(&[envelope], &[]).await {
            tracing::warn!(error = %err, "could not log a lapsed reply's end; only tabs here are told");
        }
        let followed = (lapsed.user.clone(), lapsed.conversation.clone());
        self.deliver_local(&followed, None, &logged);
    }
}
