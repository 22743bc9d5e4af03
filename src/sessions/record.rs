//! The fields of a stored session that the session stores need to know
//! about: the user and how it signed in, so that each store can index a
//! signed-in session by its account. A leaf: it imports no sibling.

use tower_sessions::session::Record;

/// The session's user id.
pub(super) const USER_KEY: &str = "user_id";
/// How the session's user signed in (`local`, `oidc`, `proxy`); absent for
/// anonymous users.
pub(super) const AUTH_KEY: &str = "auth";

/// The account a stored session is signed in to: what every store indexes
/// it by, so that `Sessions::revoke_user` finds it. `None` for an
/// anonymous browser's session.
pub(super) fn account_of(record: &Record) -> Option<&str> {
    record.data.get(AUTH_KEY)?;
    record.data.get(USER_KEY)?.as_str()
}
