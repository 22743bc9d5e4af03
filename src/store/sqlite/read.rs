//! Read-only connections for searches: a few, each used on a blocking
//! thread, so a long search runs beside the database thread's writes
//! (WAL lets readers and the writer work at once) instead of in front of
//! them. A leaf: it imports no sibling but `exec`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::exec::backend;
use crate::store::{StoreError, StoreResult};

/// Read connections open at most (and reads running at once).
const READERS: usize = 4;

/// The pool: connections opened on first need and kept.
#[derive(Clone)]
pub(super) struct Readers {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(READERS)),
            }),
        }
    }

    /// Runs `work` on a read-only connection, on a blocking thread, once
    /// one of [`READERS`] is free.
    pub(super) async fn read<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let permit = self
            .inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend(anyhow::anyhow!("the read pool is closed")))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let idle = inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match idle {
                Some(conn) => conn,
                None => open(&inner.path).map_err(backend)?,
            };
            let result = work(&conn);
            // A connection left inside a transaction (a panic cannot get
            // here; an error can) is not reused.
            if conn.is_autocommit() {
                inner
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Backend(anyhow::anyhow!("a database read failed (it panicked)")))?
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = 1;")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}
