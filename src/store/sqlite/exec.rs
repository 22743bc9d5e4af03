//! Statements and their errors, shared by every part of the SQLite store:
//! `exec` through the statement cache, [`savepoint`] (likewise),
//! `backend` turning a rusqlite error into a `StoreError`, and which errors
//! mean "busy, try again". A leaf: it imports no sibling.

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

/// Runs a statement without parameters (`BEGIN`, `COMMIT`, a savepoint's)
/// through the statement cache: parsed once per connection, not on every
/// use as `execute_batch` does.
pub(super) fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A savepoint, as `Connection::savepoint` makes, but with its statements
/// from the statement cache (the database thread opens one for most
/// calls). [`commit`](Savepoint::commit) releases it; dropped without
/// that, it is rolled back (then released).
pub(super) struct Savepoint<'c> {
    conn: &'c Connection,
    done: bool,
}

/// Opens a [`Savepoint`] on `conn`.
pub(super) fn savepoint(conn: &Connection) -> StoreResult<Savepoint<'_>> {
    run(conn, "SAVEPOINT call").map_err(backend)?;
    Ok(Savepoint { conn, done: false })
}

impl Savepoint<'_> {
    /// Keeps what was done in it (when releasing fails, dropping it rolls
    /// it back).
    pub(super) fn commit(mut self) -> StoreResult<()> {
        run(self.conn, "RELEASE call").map_err(backend)?;
        self.done = true;
        Ok(())
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = run(self.conn, "ROLLBACK TO call");
            let _ = run(self.conn, "RELEASE call");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
        let rows = stmt.query_map([], |row| row.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    /// As the database thread uses them: inside its batch's transaction, a
    /// savepoint dropped without `commit` undoes only its own writes (also
    /// after an error), one committed keeps them, and the batch commits
    /// what was kept.
    #[test]
    fn a_savepoint_keeps_its_writes_only_when_committed() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        run(&conn, "BEGIN IMMEDIATE").unwrap();
        {
            let sp = savepoint(&conn).unwrap();
            exec(&sp, "INSERT INTO t (n) VALUES (1)", []).unwrap();
            sp.commit().unwrap();
        }
        let failed: StoreResult<()> = (|| {
            let sp = savepoint(&conn)?;
            exec(&sp, "INSERT INTO t (n) VALUES (2)", [])?;
            exec(&sp, "INSERT INTO t (n) VALUES (1)", [])?;
            sp.commit()
        })();
        {
            let sp = savepoint(&conn).unwrap();
            exec(&sp, "INSERT INTO t (n) VALUES (3)", []).unwrap();
        }
        run(&conn, "COMMIT").unwrap();

        assert!(matches!(failed, Err(StoreError::Backend(_))), "{failed:?}");
        assert_eq!(rows(&conn), [1]);
        assert!(conn.is_autocommit(), "a savepoint was left open");
    }
}
