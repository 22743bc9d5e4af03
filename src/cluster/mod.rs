//! Several instances as one server (`REDIS_URL`): the Redis connections,
//! their readiness, and the channels the instances talk over. What arrives on a channel is
//! handed to the layer that owns it (the reply hub, the turn registry), so
//! this module depends on none of them.

mod connections;
mod control;
mod subscriptions;
mod tls;

pub use connections::{timed, RedisConnections, Topology};
pub use control::{listen, Handlers};
