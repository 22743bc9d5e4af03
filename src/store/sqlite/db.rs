//! The connection: one thread owns it and runs the store's calls in order,
//! committing the calls that queued up meanwhile together (each in its own
//! savepoint); a busy or locked database is reported as retryable.
//! Searches read through their own connections (`read`), beside it, and
//! a second thread copies the WAL into the file (`Checkpointer`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::wal::CheckpointMode;
use rusqlite::Connection;

use super::exec::{is_busy, run};
use super::index::{index_slice, INDEX_EVERY, SLICE};
use super::read::Readers;
use super::schema::{migrate, SCHEMA};
use crate::store::{StoreError, StoreResult};

/// The SQLite connection, owned by one thread that runs the store's calls
/// in order. Calls that queue up while one runs are committed together:
/// each in a savepoint of its own (a failing call undoes only itself), the
/// batch in one transaction, so under load many turns share one WAL commit
/// and one full-text index flush. A call's result is handed back only once
/// its batch is committed.
#[derive(Clone)]
pub struct SqliteDb {
    jobs: std::sync::mpsc::Sender<Job>,
    readers: Readers,
}

/// One call: runs on the connection, returns what finishes it once the
/// batch's commit is known (`Some` error when the commit failed).
type Job = Box<dyn FnOnce(&mut Connection) -> Finish + Send>;
type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// Calls committed together at most.
const MAX_BATCH: usize = 64;

/// WAL pages (4 KiB) after which the WAL is copied into the file (SQLite's
/// default is 1000). A turn rewrites the same few pages (its
/// conversation's row, the messages table's last leaf and its indexes,
/// the usage row) commit after commit: each commit appends them to the WAL
/// again, but a checkpoint writes each page once however often the WAL
/// holds it, so a longer interval writes (and syncs) the file less. The
/// WAL file stays at about this many pages (~16 MiB) plus what the writer
/// adds while the copy runs.
const WAL_AUTOCHECKPOINT: i32 = 4000;

/// WAL pages past which the writer copies the WAL itself after its commit,
/// waiting for it, as SQLite's own automatic checkpoint does: the
/// checkpointer thread has fallen this far behind (a disk slower than the
/// writes), or a long read holds the WAL back.
const WAL_BACKSTOP: i32 = 4 * WAL_AUTOCHECKPOINT;

/// Bytes the WAL file is cut back to when it is started again from its
/// beginning after it grew past them (a checkpoint held back by a long
/// read, a large import); SQLite keeps it at its largest otherwise.
const WAL_SIZE_LIMIT: u64 = 32 * 1024 * 1024;

/// How long opening the file waits for another process's schema update.
const SCHEMA_UPDATE_WAIT: Duration = Duration::from_secs(600);

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteDb")
    }
}

impl SqliteDb {
    /// Opens (creating the file and its folder) and migrates the database,
    /// and starts the thread that owns the connection.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the folder {}", parent.display()))?;
        }
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        // temp_store: a savepoint's journal (every call has one, and its
        // statements their own inside) stays in memory. By default SQLite
        // moves it to a temporary file once it passes 64 KiB, which an
        // append reaches when its pages split, and then writes every page
        // journaled for the rest of the batch to that file (under a
        // turn-shaped load, more writes than to the WAL). The writer's own
        // sorts stay in memory too: each is bounded by a LIMIT or sorts
        // rows its call returns (and so holds) anyway.
        conn.execute_batch(
            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;",
        )
        .context("setting database pragmas")?;
        wal_mode(&conn).context("setting database pragmas")?;
        conn.execute_batch(&format!("PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"))
            .context("setting database pragmas")?;
        conn.execute_batch(SCHEMA)
            .with_context(|| format!("creating the schema in {}", path.display()))?;
        // A schema update that rebuilds tables (`rekey`) holds the write lock
        // for seconds on a large file: another instance opening the file
        // meanwhile waits for it, not 5 s and then fails.
        conn.busy_timeout(SCHEMA_UPDATE_WAIT)
            .context("setting database pragmas")?;
        migrate(&mut conn).with_context(|| format!("updating the schema in {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .context("setting database pragmas")?;
        conn.set_prepared_statement_cache_capacity(64);
        let checkpointer = Checkpointer::start(path)?;
        // Replaces SQLite's automatic checkpoint (which copied the WAL in
        // the commit, the batch's callers waiting for it).
        conn.wal_hook(Some(checkpointer.hook()))
            .context("setting database pragmas")?;
        let caught_up = checkpointer.caught_up.clone();
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                // Ends when every SqliteDb handle is dropped.
                let behind = Arc::new(AtomicBool::new(false));
                let mut indexed_at = std::time::Instant::now();
                loop {
                    let wait = if behind.load(Ordering::Relaxed) {
                        std::time::Duration::ZERO
                    } else {
                        INDEX_EVERY.saturating_sub(indexed_at.elapsed())
                    };
                    let mut batch = match queue.recv_timeout(wait) {
                        Ok(job) => vec![job],
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Vec::new(),
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    while !batch.is_empty() && batch.len() < MAX_BATCH {
                        match queue.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    // A slice of indexing joins the batch (one commit for
                    // both), or runs alone when no call waits.
                    if behind.load(Ordering::Relaxed) || indexed_at.elapsed() >= INDEX_EVERY {
                        indexed_at = std::time::Instant::now();
                        batch.push(index_job(behind.clone()));
                    }
                    if !batch.is_empty() {
                        run_batch(&mut conn, batch);
                    }
                    // The writer's part of a checkpoint, after the
                    // checkpointer's copy: the pages added since (a few
                    // hundred at most under load) and the two `fsync`s, so
                    // that the next transaction starts the WAL again
                    // (SQLite does that when every page is in the file and
                    // no read still uses the WAL).
                    if caught_up.swap(false, Ordering::Relaxed) {
                        copy_wal(&conn);
                    }
                }
            })
            .context("starting the database thread")?;
        Ok(Self {
            jobs,
            readers: Readers::new(path),
        })
    }

    /// Runs `work` on a read-only connection of its own, not on the
    /// database thread: what it reads does not wait for writes, nor they
    /// for it.
    pub(super) async fn read<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.readers.read(work).await
    }

    /// Runs `work` with the connection on the database thread.
    pub async fn call<R, F>(&self, work: F) -> StoreResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = work(conn);
            Box::new(move |commit: Option<&rusqlite::Error>| {
                let result = match (result, commit) {
                    (Ok(_), Some(err)) => Err(commit_failure(err)),
                    (result, _) => result,
                };
                let _ = tx.send(result);
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend(anyhow::anyhow!("the database thread has stopped")))?;
        rx.await.map_err(|_| {
            StoreError::Backend(anyhow::anyhow!("a database call failed (it panicked)"))
        })?
    }
}

/// Copies the WAL into the database file on a thread and connection of
/// its own, beside the writer: the copy and its two `fsync`s (tens of
/// milliseconds of disk waits each time, more on a slow disk) no longer
/// hold up the batch that crossed [`WAL_AUTOCHECKPOINT`], nor the batches
/// queued behind it. The writer then copies the few pages it added
/// meanwhile (between two batches, [`copy_wal`]), so that its next transaction starts
/// the WAL again from its beginning: a checkpoint that never catches up
/// with a busy writer would let the WAL grow without end.
struct Checkpointer {
    /// Wakes the thread; one wake-up waits at most.
    wake: std::sync::mpsc::SyncSender<()>,
    /// Set by the thread after a copy: the writer finishes it.
    caught_up: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Opens the thread's connection and starts it. The thread ends when
    /// the writer's connection (which holds the hook, and so the sender)
    /// is closed.
    fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = checkpoint_connection(path)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let caught_up = Arc::new(AtomicBool::new(false));
        let done = caught_up.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    if catch_up(&conn) {
                        done.store(true, Ordering::Relaxed);
                    }
                }
            })
            .context("starting the database checkpoint thread")?;
        Ok(Self { wake, caught_up })
    }

    /// The writer's WAL hook (called after each commit with the WAL's
    /// pages): wakes the thread each [`WAL_AUTOCHECKPOINT`] pages, and past
    /// [`WAL_BACKSTOP`] copies the WAL in the commit itself.
    fn hook(
        &self,
    ) -> impl FnMut(&mut rusqlite::hooks::Wal, std::ffi::c_int) -> rusqlite::Result<()> {
        let wake = self.wake.clone();
        let mut next_wake = WAL_AUTOCHECKPOINT;
        move |wal, pages| {
            if pages < WAL_AUTOCHECKPOINT {
                // The WAL started again from its beginning.
                next_wake = WAL_AUTOCHECKPOINT;
            } else if pages >= next_wake {
                // Full: a wake-up is already waiting.
                let _ = wake.try_send(());
                next_wake = pages.saturating_add(WAL_AUTOCHECKPOINT);
            }
            if pages >= WAL_BACKSTOP {
                // A failure here fails nothing: the commit is done.
                let _ = wal.checkpoint();
            }
            Ok(())
        }
    }
}

/// The checkpointer's connection to the file at `path` (in WAL mode).
fn checkpoint_connection(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("opening the database {}", path.display()))?;
    // A read opens the connection's WAL: until one has, a checkpoint on it
    // does nothing (and answers -1 pages).
    conn.execute_batch("PRAGMA busy_timeout = 5000; SELECT count(*) FROM sqlite_schema;")
        .context("setting database pragmas")?;
    Ok(conn)
}

/// Pages the writer may have added since the checkpointer's last copy
/// for it to finish the checkpoint: the writer's copy syncs them (the
/// WAL's `fsync` waits for the disk to take what was written since the
/// last one), and the disk holds up its batches meanwhile.
const CATCH_UP_PAGES: i32 = 256;

/// The checkpointer's copy, in passes: each copies (and syncs) the pages
/// the writer added during the one before, fewer each time, until a pass
/// finds fewer than [`CATCH_UP_PAGES`] new ones (at most 8 passes).
/// `true` when it caught up; `false` when it could not copy (another
/// connection, a second instance, is checkpointing; an error).
fn catch_up(conn: &Connection) -> bool {
    let mut copied = None;
    for _ in 0..8 {
        let Some(pages) = copy_wal(conn) else {
            return false;
        };
        // The WAL started again from its beginning (restarted by the
        // writer, or a second instance) when it shrank.
        if copied.is_some_and(|before| pages < before + CATCH_UP_PAGES) {
            return true;
        }
        copied = Some(pages);
    }
    true
}

/// One `PASSIVE` checkpoint on `conn`: copies what no reader still needs,
/// without taking the write lock. The WAL's pages, or `None` when nothing
/// could be copied: another connection (a second instance) is
/// checkpointing, the connection has no WAL open (-1 pages), or an error
/// (logged).
fn copy_wal(conn: &Connection) -> Option<i32> {
    match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
        Ok((pages, _)) => (pages >= 0).then_some(pages),
        Err(err) if is_busy(&err) => None,
        Err(err) => {
            tracing::warn!(error = %err, "could not copy the WAL into the database file; retrying later");
            None
        }
    }
}

/// Switches the file to WAL. SQLite answers "busy" at once, without
/// waiting, when another connection (an instance opening the file at the
/// same time) holds a lock the switch needs: retried for up to 5 s.
fn wal_mode(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.execute_batch("PRAGMA journal_mode = WAL") {
            Err(err) if is_busy(&err) && started.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// A slice of search indexing, as a call; sets `behind` when more messages
/// wait (the slice was full). After a failure it is retried after
/// [`INDEX_EVERY`].
fn index_job(behind: Arc<AtomicBool>) -> Job {
    Box::new(move |conn| {
        let full = match index_slice(conn) {
            Ok(added) => added == SLICE,
            Err(err) => {
                tracing::warn!(error = %err, "could not update the search index; retrying later");
                false
            }
        };
        behind.store(full, Ordering::Relaxed);
        Box::new(|_| {})
    })
}

/// Runs queued calls in one transaction, then finishes each. `BEGIN` and
/// `COMMIT` come from the statement cache, parsed once.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    // IMMEDIATE: the write lock is taken (waiting up to busy_timeout) now,
    // not on the first write, where another process sharing the file (a
    // second instance in tests, `migrate`) would make it fail at once.
    // Without the outer transaction (BEGIN failed) each call still runs in
    // its own savepoint, which SQLite commits on release.
    let outer = run(conn, "BEGIN IMMEDIATE").is_ok();
    let mut finishes = Vec::with_capacity(batch.len());
    let mut jobs = batch.into_iter();
    while let Some(job) = jobs.next() {
        // A panicking call drops its sender (its caller gets an error); its
        // savepoint rolls back as it unwinds; the others go on.
        if let Ok(finish) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(conn))) {
            finishes.push(finish);
        }
        if outer && conn.is_autocommit() {
            // SQLite rolled the whole transaction back (an I/O error in a
            // statement does): what the calls so far wrote is gone, so they
            // fail. The rest must not run outside a transaction, where each
            // call's release commits at once and the COMMIT below would then
            // report a failure for writes that were kept.
            let gone = rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the batch's transaction was rolled back".into()),
            );
            for finish in finishes {
                finish(Some(&gone));
            }
            return run_batch(conn, jobs.collect());
        }
    }
    let commit = if outer {
        run(conn, "COMMIT").err()
    } else {
        None
    };
    if commit.is_some() {
        let _ = run(conn, "ROLLBACK");
    }
    for finish in finishes {
        finish(commit.as_ref());
    }
}

/// The error every call of a batch whose commit failed gets.
fn commit_failure(err: &rusqlite::Error) -> StoreError {
    if is_busy(err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(anyhow::anyhow!("commit failed: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::exec::{exec, savepoint};
    use super::*;

    /// When SQLite rolls a batch's transaction back in the middle (here a
    /// call ends it as an I/O error would), the calls before fail (their
    /// writes are gone) and the calls after still run in a transaction:
    /// each answers success exactly when what it wrote was kept.
    #[tokio::test]
    async fn a_batch_rolled_back_midway_fails_what_was_lost_and_runs_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("chat.db")).unwrap();
        db.call(|conn| {
            conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
                .map_err(super::super::exec::backend)
        })
        .await
        .unwrap();
        // Holds the thread until the three calls below are queued, so they
        // make one batch.
        let (started, wait_started) = tokio::sync::oneshot::channel();
        let (release, wait_release) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let db = db.clone();
            async move {
                db.call(move |_| {
                    started.send(()).unwrap();
                    wait_release.recv().unwrap();
                    Ok(())
                })
                .await
            }
        });
        wait_started.await.unwrap();
        // Each call is queued in order: polled once, it has sent its job.
        let write = |n: i64, then_roll_back: bool| {
            let mut call = Box::pin(db.call(move |conn| {
                let sp = savepoint(conn)?;
                exec(&sp, "INSERT INTO t (n) VALUES (?1)", [n])?;
                sp.commit()?;
                if then_roll_back {
                    conn.execute_batch("ROLLBACK")
                        .map_err(super::super::exec::backend)?;
                }
                Ok(())
            }));
            let waker = futures_util::task::noop_waker();
            let pending = std::future::Future::poll(
                call.as_mut(),
                &mut std::task::Context::from_waker(&waker),
            );
            assert!(pending.is_pending(), "answered before the batch ran");
            call
        };
        let before = write(1, false);
        let rolled_back = write(2, true);
        let after = write(3, false);
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();

        let answers = [
            before.await.is_ok(),
            rolled_back.await.is_ok(),
            after.await.is_ok(),
        ];
        let kept = db
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
                let rows = stmt.query_map([], |row| row.get::<_, i64>(0)).unwrap();
                Ok(rows.collect::<Result<Vec<_>, _>>().unwrap())
            })
            .await
            .unwrap();

        assert_eq!(answers, [false, false, true]);
        assert_eq!(kept, [3]);
    }

    /// The WAL's pages since it last started from its beginning, and how
    /// many of them are copied into the file, from the WAL index (the
    /// `-shm` file SQLite maps: the header's `mxFrame`, then the
    /// checkpoint's `nBackfill`, both native-endian).
    fn wal_index(path: &Path) -> (u32, u32) {
        let shm = std::fs::read(format!("{}-shm", path.display())).unwrap();
        let word = |at: usize| u32::from_ne_bytes(shm[at..at + 4].try_into().unwrap());
        (word(16), word(96))
    }

    /// One page-sized row per `rows`, in one statement.
    fn insert_pages(conn: &Connection, rows: u32) -> rusqlite::Result<usize> {
        conn.execute(
            "INSERT INTO pad (bytes) WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 \
             FROM k WHERE n < ?1) SELECT zeroblob(3000) FROM k",
            [rows],
        )
    }

    /// The checkpointer's connection copies the WAL into the file itself:
    /// every page the writer committed, without the writer.
    #[test]
    fn the_checkpointer_copies_the_wal_on_its_own_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE pad (n INTEGER PRIMARY KEY, bytes BLOB NOT NULL);",
            )
            .unwrap();
        let conn = checkpoint_connection(&path).unwrap();
        for _ in 0..10 {
            insert_pages(&writer, 20).unwrap();
        }
        let (pages, copied) = wal_index(&path);
        assert!(pages >= 200, "{pages} pages in the WAL");
        assert_eq!(copied, 0);

        assert!(catch_up(&conn));

        assert_eq!(wal_index(&path), (pages, pages));
    }

    /// Past [`WAL_AUTOCHECKPOINT`] pages (and short of the writer's own
    /// backstop) the checkpointer copies the WAL and the writer starts it
    /// again from its beginning; nothing written is lost.
    #[tokio::test]
    async fn a_wal_past_the_autocheckpoint_is_copied_and_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let db = SqliteDb::open(&path).unwrap();
        db.call(|conn| {
            conn.execute_batch("CREATE TABLE pad (n INTEGER PRIMARY KEY, bytes BLOB NOT NULL)")
                .map_err(super::super::exec::backend)
        })
        .await
        .unwrap();
        let calls = (WAL_AUTOCHECKPOINT as u32 * 3 / 2).div_ceil(100);
        for _ in 0..calls {
            db.call(|conn| insert_pages(conn, 100).map_err(super::super::exec::backend))
                .await
                .unwrap();
        }

        let started = std::time::Instant::now();
        let mut pages = wal_index(&path).0;
        while pages >= WAL_AUTOCHECKPOINT as u32 && started.elapsed().as_secs() < 10 {
            // The writer finishes the copy between calls.
            db.call(|conn| insert_pages(conn, 1).map_err(super::super::exec::backend))
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            pages = wal_index(&path).0;
        }
        let (rows, autocheckpoint) = db
            .call(|conn| {
                let rows = conn
                    .query_row("SELECT count(*) FROM pad", [], |row| row.get::<_, u32>(0))
                    .map_err(super::super::exec::backend)?;
                // SQLite's own checkpoint in the commit (which would also
                // start the WAL again) is replaced by the hook: 0 here.
                let autocheckpoint = conn
                    .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get::<_, i64>(0))
                    .map_err(super::super::exec::backend)?;
                Ok((rows, autocheckpoint))
            })
            .await
            .unwrap();

        assert!(
            pages < WAL_AUTOCHECKPOINT as u32,
            "the WAL still holds {pages} pages after {:?}",
            started.elapsed()
        );
        assert!(rows > calls * 100, "{rows} rows");
        assert_eq!(autocheckpoint, 0);
    }

    /// SQLite's temporary files this process holds open (a journal moved
    /// out of memory): opened without a name (O_TMPFILE, shown as `#` and
    /// the inode), or as `etilqs_…` and unlinked at once.
    fn sqlite_temporary_files() -> Vec<String> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .map(|target| target.display().to_string())
            .filter(|target| {
                let name = target.rsplit('/').next().unwrap_or_default();
                target.ends_with("(deleted)")
                    && (name.starts_with('#') || name.starts_with("etilqs_"))
            })
            .collect()
    }

    /// A call that changes many pages (a large conversation's delete, an
    /// index round) journals them all in its savepoint: the journal stays
    /// in memory instead of moving to a temporary file past 64 KiB.
    #[tokio::test]
    async fn a_large_savepoint_journal_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("chat.db")).unwrap();
        db.call(|conn| {
            conn.execute_batch(
                "CREATE TABLE filler (n INTEGER PRIMARY KEY, pad TEXT NOT NULL);
                 WITH RECURSIVE k(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM k WHERE n < 2000)
                 INSERT INTO filler SELECT n, printf('%.200c', 'x') FROM k;",
            )
            .map_err(super::super::exec::backend)
        })
        .await
        .unwrap();

        let during = db
            .call(|conn| {
                let sp = savepoint(conn)?;
                // About 100 pages of 4 KiB changed: a 400 KiB journal.
                exec(&sp, "UPDATE filler SET pad = printf('%.200c', 'y')", [])?;
                let open = sqlite_temporary_files();
                sp.commit()?;
                Ok(open)
            })
            .await
            .unwrap();

        assert_eq!(during, Vec::<String>::new());
    }
}
