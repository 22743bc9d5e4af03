//! The cross-instance channels: `{prefix}:replies` (every reply event, for
//! the watchers on other instances) and `{prefix}:control` (stops), plus
//! this instance's own channel. One subscriber receives them all and hands
//! each message to its handler.

use super::connections::RedisConnections;

/// What to do with a message of each channel (called on the listener's
/// task: keep it short).
pub struct Handlers {
    pub reply: Box<dyn Fn(&str) + Send>,
    pub control: Box<dyn Fn(&str) + Send>,
    /// Messages were lost (the listener fell behind): whatever they
    /// carried must be read again from where it is kept.
    pub lagged: Box<dyn Fn() + Send>,
}

/// Subscribes to the reply and control channels and dispatches their
/// messages until the subscriber is dropped.
pub async fn listen(redis: RedisConnections, handlers: Handlers) {
    use fred::interfaces::{EventInterface, PubsubInterface};
    let replies = redis.key("replies");
    let control = redis.key("control");
    let mut messages = redis.control_subscriber.message_rx();
    if let Err(err) = redis
        .control_subscriber
        .subscribe(vec![
            replies.clone(),
            control.clone(),
            redis.instance_channel.clone(),
        ])
        .await
    {
        tracing::error!(error = %err, "could not subscribe to the reply and control channels");
    }
    loop {
        let message = match messages.recv().await {
            Ok(message) => message,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "reply events came faster than delivered; reading the reply logs again"
                );
                (handlers.lagged)();
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(raw) = message.value.as_string() else {
            continue;
        };
        if *message.channel == *replies {
            (handlers.reply)(&raw);
        } else if *message.channel == *control {
            (handlers.control)(&raw);
        }
    }
}
