//! Keeping pub/sub subscriptions in place across Redis reconnections, and
//! asking Redis whether they are (for `/readyz`).

use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::PubsubInterface;

/// Plain or sharded pub/sub channels.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    Plain,
    Sharded,
}

/// Whether Redis reports a subscriber on every one of `channels` (sharded).
pub(super) async fn confirmed(
    client: &Client,
    channels: &std::collections::BTreeSet<fred::bytes_utils::Str>,
) -> bool {
    use fred::interfaces::ClientLike;
    for channel in channels {
        // A Redis Cluster answers SHARDNUMSUB for a channel on a node that
        // does not own its slot with 0 (no redirection), and fred routes
        // the command to any node: send it to the owner of the slot.
        let slot = fred::util::redis_keyslot(channel.as_bytes());
        let options = fred::types::config::Options {
            cluster_hash: Some(Some(slot).into()),
            ..Default::default()
        };
        match client
            .with_options(&options)
            .pubsub_shardnumsub::<(String, u64), _>(channel.to_string())
            .await
        {
            Ok((_, count)) if count >= 1 => {}
            _ => return false,
        }
    }
    true
}

/// After every reconnection, subscribes `subscriber` again to the channels
/// it tracks, retrying until it works. (fred's own `manage_subscriptions`
/// first sends a SUBSCRIBE even with no plain channel to send, which Redis
/// refuses, and then never re-subscribes the sharded ones: the instance
/// would stay connected but deaf.)
pub(super) fn keep_subscribed(subscriber: SubscriberClient, kind: Kind) {
    use fred::interfaces::EventInterface;
    let mut reconnects = subscriber.reconnect_rx();
    tokio::spawn(async move {
        while reconnects.recv().await.is_ok() {
            for attempt in 1..=40u64 {
                let result = match kind {
                    Kind::Plain => {
                        let channels: Vec<String> = subscriber
                            .tracked_channels()
                            .iter()
                            .map(|c| c.to_string())
                            .collect();
                        if channels.is_empty() {
                            Ok(())
                        } else {
                            subscriber.subscribe(channels).await
                        }
                    }
                    Kind::Sharded => {
                        let mut result = Ok(());
                        for channel in subscriber.tracked_shard_channels() {
                            if let Err(err) = subscriber.ssubscribe(channel.to_string()).await {
                                result = Err(err);
                            }
                        }
                        result
                    }
                };
                match result {
                    Ok(()) => {
                        tracing::info!(?kind, "re-subscribed after the Redis reconnection");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(?kind, attempt, error = %err, "re-subscribing failed; retrying");
                        tokio::time::sleep(Duration::from_millis(250 * attempt.min(8))).await;
                    }
                }
            }
        }
    });
}
