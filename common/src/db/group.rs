//! Group commit on PostgreSQL: the writes of concurrent callers share one
//! transaction.
//!
//! A short write's commit costs a flush of the write-ahead log and a round
//! trip.
//! While a group commits, the writes that arrive queue up; the next free
//! committer takes up to [`MAX_GROUP`] of them, runs them one after the
//! other in one transaction and commits once. Nothing waits for a group to
//! fill: a write that finds a committer free is committed at once, alone.
//!
//! Each caller still gets its own outcome, exactly what a transaction of
//! its own would give it (all of its work or none, its own error):
//!
//! - the group commits: every write in it is stored;
//! - a write fails with an error of its own (a unique violation, say): the
//!   group rolls back and each of its writes runs again alone, in a
//!   transaction of its own — which is why the work is `Fn`: it may run
//!   twice, and only a committed run counts;
//! - the group fails with a transient error (no connection, the connection
//!   lost, a serialization failure): nothing of it was stored — or, if the
//!   connection was lost during the commit, all of it may have been, as
//!   for any transaction — and every write in it gets that error, which
//!   tells its caller to retry.
//!
//! Work must therefore keep its effects inside the transaction; a
//! `pg_notify` is such an effect (delivered only at commit).

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
};

use diesel::{Connection as _, result::Error as DieselError};

use super::{Database, DbConnection, StorageError};

/// The most writes one transaction takes.
pub(super) const MAX_GROUP: usize = 32;

/// A caller's work, run in a group's transaction (or alone).
type Work = Box<dyn FnMut(&mut DbConnection) -> Result<(), DieselError> + Send>;
/// How a caller is told the outcome of its write once that is final.
type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A caller's write.
pub(super) struct Write {
    work: Work,
    done: Done,
}

impl Write {
    pub(super) fn new(
        work: impl FnMut(&mut DbConnection) -> Result<(), DieselError> + Send + 'static,
        done: impl FnOnce(Result<(), StorageError>) + Send + 'static,
    ) -> Self {
        Self {
            work: Box::new(work),
            done: Box::new(done),
        }
    }
}

/// The writes waiting for a committer, and how many committers run: the
/// callers' works here, items of a batch in [`super::batch`].
pub(super) struct Groups<W = Write> {
    state: Mutex<State<W>>,
    committers: usize,
}

struct State<W> {
    waiting: VecDeque<W>,
    running: usize,
}

impl<W> Groups<W> {
    /// At most `committers` groups commit at once.
    pub(super) fn new(committers: usize) -> Self {
        Self {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                running: 0,
            }),
            committers: committers.max(1),
        }
    }

    /// Queues `write`; true when the caller must start a committer for it.
    pub(super) fn push(&self, write: W) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.waiting.push_back(write);
        let start = state.running < self.committers;
        if start {
            state.running += 1;
        }
        start
    }

    /// The next group of at most `max`, or `None` when no write waits (the
    /// committer then stops: under the same lock as `push`, so no write is
    /// left behind).
    pub(super) fn next(&self, max: usize) -> Option<Vec<W>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let count = state.waiting.len().min(max);
        if count == 0 {
            state.running -= 1;
            return None;
        }
        Some(state.waiting.drain(..count).collect())
    }
}

impl Database {
    /// A committer: commits groups until no write waits. Runs on the
    /// blocking pool.
    pub(super) fn commit_groups(&self) {
        while let Some(group) = self.groups.next(MAX_GROUP) {
            // A panicking write is a bug; its group's callers hear that
            // their write was lost, and the committer goes on.
            let committed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(group)));
            if committed.is_err() {
                tracing::error!("a grouped write panicked; its group was not committed");
            }
        }
    }

    fn commit(&self, mut group: Vec<Write>) {
        let mut pooled = match self.pool.get() {
            Ok(pooled) => pooled,
            Err(error) => return fail(group, &StorageError::Pool(error)),
        };
        let conn = &mut pooled.conn;
        let stored = conn.transaction(|c| group.iter_mut().try_for_each(|write| (write.work)(c)));
        pooled.answered = std::time::Instant::now();
        let error = match stored {
            Ok(()) => {
                for write in group {
                    (write.done)(Ok(()));
                }
                return;
            }
            Err(error) => StorageError::Query(error),
        };
        if group.len() == 1 || error.is_transient() {
            return fail(group, &error);
        }
        // Some write failed of its own accord: each alone, as if never grouped.
        for mut write in group {
            let alone = pooled.conn.transaction(|c| (write.work)(c));
            (write.done)(alone.map_err(StorageError::Query));
        }
    }
}

/// Tells every write of `group` that it failed with `error`.
fn fail(group: Vec<Write>, error: &StorageError) {
    for write in group {
        (write.done)(Err(copy(error)));
    }
}

/// `error` again, for another write of the same failed group: the same kind
/// and message, and so equally transient or not.
pub(super) fn copy(error: &StorageError) -> StorageError {
    match error {
        StorageError::Query(DieselError::DatabaseError(kind, information)) => StorageError::Query(
            DieselError::DatabaseError(*kind, Box::new(information.message().to_owned())),
        ),
        StorageError::Pool(error) => StorageError::NoConnection(error.to_string()),
        other => StorageError::Grouped(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use diesel::{
        OptionalExtension as _, RunQueryDsl as _, sql_query,
        sql_types::{BigInt, Text},
    };
    use futures_util::future::join_all;

    use super::*;
    use crate::db::{DatabaseUrl, is_unique_violation};

    #[derive(diesel::QueryableByName)]
    struct Transaction {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }

    /// A scratch PostgreSQL database with a table of keys.
    async fn postgres(pool: u32) -> anyhow::Result<(Database, DatabaseUrl)> {
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, pool)?;
        db.write(|c| sql_query("CREATE TABLE keys (key TEXT PRIMARY KEY)").execute(c))
            .await?;
        Ok((db, url))
    }

    /// Inserts `key`; the id of the transaction it ran in.
    fn insert(c: &mut DbConnection, key: &str) -> Result<i64, DieselError> {
        sql_query("INSERT INTO keys (key) VALUES ($1)")
            .bind::<Text, _>(key)
            .execute(c)?;
        sql_query("SELECT txid_current() AS id")
            .get_result::<Transaction>(c)
            .map(|t| t.id)
    }

    /// Inserts each key in a grouped write of its own, all at once; their
    /// outcomes, in order.
    async fn insert_each(
        db: &Database,
        keys: impl IntoIterator<Item = String>,
    ) -> Vec<Result<i64, StorageError>> {
        join_all(keys.into_iter().map(|key| {
            let db = db.clone();
            async move { db.grouped(move |c| insert(c, &key)).await }
        }))
        .await
    }

    fn stored(c: &mut DbConnection, key: &str) -> Result<bool, DieselError> {
        #[derive(diesel::QueryableByName)]
        struct Key {
            #[diesel(sql_type = Text)]
            #[allow(dead_code)]
            key: String,
        }
        sql_query("SELECT key FROM keys WHERE key = $1")
            .bind::<Text, _>(key)
            .get_result::<Key>(c)
            .optional()
            .map(|k| k.is_some())
    }

    /// Holds the one committer of `db` (a pool of two) in a write until the
    /// returned sender is dropped; returns once that write runs.
    async fn hold_the_committer(
        db: &Database,
    ) -> (
        mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<i64, StorageError>>,
    ) {
        let (running, is_running) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let db = db.clone();
        let held = tokio::spawn(async move {
            db.grouped(move |c| {
                let _ = running.send(());
                let _ = released.lock().map(|r| r.recv());
                insert(c, "held")
            })
            .await
        });
        tokio::task::spawn_blocking(move || is_running.recv())
            .await
            .ok();
        (release, held)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_that_wait_for_a_committer_share_one_transaction() -> anyhow::Result<()> {
        let (db, url) = postgres(2).await?;
        let (release, held) = hold_the_committer(&db).await;
        // Twenty callers write while the committer is busy: one poll each
        // queues all of them before it is free again.
        let writes = insert_each(&db, (0..20).map(|n| format!("key-{n}")));
        let released = async {
            tokio::task::yield_now().await;
            drop(release);
        };
        let (transactions, ()) = tokio::join!(writes, released);
        held.await??;
        let transactions = transactions.into_iter().collect::<Result<Vec<_>, _>>()?;
        let distinct: std::collections::BTreeSet<_> = transactions.iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "one commit for the twenty: {transactions:?}"
        );
        for n in 0..20 {
            assert!(db.read(move |c| stored(c, &format!("key-{n}"))).await?);
        }
        drop(db);
        url.drop_if_exists()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_fails_fails_alone_and_the_others_of_its_group_are_stored()
    -> anyhow::Result<()> {
        let (db, url) = postgres(2).await?;
        db.grouped(|c| insert(c, "taken")).await?;
        let (release, held) = hold_the_committer(&db).await;
        let keys: Vec<String> = (0..10)
            .map(|n| match n {
                3 | 7 => "taken".to_owned(),
                n => format!("key-{n}"),
            })
            .collect();
        let writes = insert_each(&db, keys.iter().cloned());
        let released = async {
            tokio::task::yield_now().await;
            drop(release);
        };
        let (outcomes, ()) = tokio::join!(writes, released);
        held.await??;
        for (key, outcome) in keys.iter().zip(outcomes) {
            match outcome {
                Err(StorageError::Query(e)) if key == "taken" => {
                    assert!(is_unique_violation(&e), "{key}: {e:?}");
                }
                Ok(_) if key != "taken" => {
                    let key = key.clone();
                    assert!(db.read(move |c| stored(c, &key)).await?);
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        drop(db);
        url.drop_if_exists()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_whose_connection_is_lost_stores_nothing_and_every_write_hears_it_is_transient()
    -> anyhow::Result<()> {
        #[derive(diesel::QueryableByName)]
        struct Backend {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            pid: i32,
        }
        let (db, url) = postgres(2).await?;
        let (release_first, first) = hold_the_committer(&db).await;
        // The next group: a write that tells its connection's server process
        // and waits, then three more.
        let (backend, its_backend) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let waiting = db.grouped(move |c| {
            let pid = sql_query("SELECT pg_backend_pid() AS pid").get_result::<Backend>(c)?;
            let _ = backend.send(pid.pid);
            let _ = released.lock().map(|r| r.recv());
            insert(c, "waiting")
        });
        let others = insert_each(&db, (0..3).map(|n| format!("key-{n}")));
        let lose_the_connection = async {
            tokio::task::yield_now().await;
            drop(release_first);
            let pid = tokio::task::spawn_blocking(move || its_backend.recv()).await??;
            db.read(move |c| sql_query(format!("SELECT pg_terminate_backend({pid})")).execute(c))
                .await?;
            drop(release);
            anyhow::Ok(())
        };
        let (waited, others, lost) = tokio::join!(waiting, others, lose_the_connection);
        lost?;
        first.await??;
        for outcome in others.into_iter().chain([waited.map(|_| 0)]) {
            match outcome {
                Err(error) => assert!(error.is_transient(), "{error:?}"),
                Ok(_) => panic!("a write of the lost group was reported stored"),
            }
        }
        for key in ["waiting", "key-0", "key-1", "key-2"] {
            assert!(!db.read(move |c| stored(c, key)).await?, "{key} stored");
        }
        drop(db);
        url.drop_if_exists()
    }

    #[test]
    fn a_failed_groups_error_reaches_every_write_as_transient_as_it_was() {
        use diesel::result::DatabaseErrorKind;
        let lost = StorageError::Query(DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("server closed the connection".to_owned()),
        ));
        assert!(copy(&lost).is_transient());
        assert_eq!(copy(&lost).to_string(), lost.to_string());
        let bug = StorageError::Query(DieselError::NotFound);
        assert!(!copy(&bug).is_transient());
    }
}
