//! Statements and their errors, shared by every part of the SQLite store:
//! `exec` through the statement cache, `backend` turning a rusqlite error
//! into a `StoreError`, and which errors mean "busy, try again". A leaf: it
//! imports no sibling.

use rusqlite::Connection;

use crate::store::{StoreError, StoreResult};

/// Another connection holds the lock (retryable).
pub(super) fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
    )
}

/// Runs a statement through the statement cache.
pub(super) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<usize> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params))
        .map_err(backend)
}

/// A rusqlite error as the store reports it: busy or locked is retryable
/// (`Unavailable`), anything else is `Backend`.
pub(super) fn backend(err: rusqlite::Error) -> StoreError {
    if is_busy(&err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(err.into())
    }
}
