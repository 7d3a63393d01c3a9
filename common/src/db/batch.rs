//! Batched writes: the items of concurrent callers written by
//! one function, in one transaction, with a statement per table rather than
//! per item.
//!
//! Group commit ([`super::group`]) shares a commit among callers but still
//! runs every caller's statements. A batch goes further. Its callers hand in
//! items, not work; while one batch commits, the items that arrive queue up,
//! and the committer then gives up to [`MAX_BATCH`] of them to the batch's
//! function at once, which writes them with multi-row statements. A consumer
//! applying a delivery is such a caller: with many deliveries in flight, the
//! statements per event fall from a dozen to a fraction of one.
//!
//! Each caller still gets its own outcome, exactly what applying its item
//! alone, in a transaction of its own, would give it:
//!
//! - the batch commits: each caller gets its item's output;
//! - the function fails on a batch of several with an error that is not
//!   transient (a malformed item, a constraint): nothing of the batch was
//!   stored; each item is applied again alone, in a transaction of its own,
//!   so the item at fault fails alone and the others are stored;
//! - a transient error (no connection, the connection lost, a deadlock):
//!   nothing was stored — or, if the connection was lost during the commit,
//!   all of it may have been, as for any transaction — and every caller
//!   gets that error, which tells it to retry;
//! - the function panics (a bug, perhaps set off by one item): nothing of
//!   the batch was stored; its items go again alone, and the caller of an
//!   item that panics alone hears that its write was lost.
//!
//! The function must therefore give one output per item, in order, and a
//! batch must store what its items stored one after the other would (items
//! repeating one another included). It may run more than once for an item;
//! only a committed run counts, so its effects stay inside the transaction.
//!
//! On SQLite a batch is written the same way, holding the database's one
//! writer lock for its transaction: while it commits, the items of the next
//! batch queue up instead of each waiting for the lock on its own.

use std::sync::Arc;

use diesel::{Connection as _, QueryResult, result::Error as DieselError};
use tokio::sync::oneshot;

use super::{Database, DatabaseUrl, DbConnection, StorageError, group};

/// The most items one batch takes.
const MAX_BATCH: usize = 64;

/// What a batch does with its items: one output per item, in order.
type Apply<T, O> = dyn Fn(&mut DbConnection, &[T]) -> QueryResult<Vec<O>> + Send + Sync;

/// An item waiting for its batch, and how its caller hears the outcome.
struct Pending<T, O> {
    item: T,
    done: oneshot::Sender<Result<O, StorageError>>,
}

/// Items written in batches by one function (see the module docs).
pub struct Batches<T, O> {
    db: Database,
    apply: Arc<Apply<T, O>>,
    waiting: Arc<group::Groups<Pending<T, O>>>,
}

impl<T, O> Clone for Batches<T, O> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            apply: Arc::clone(&self.apply),
            waiting: Arc::clone(&self.waiting),
        }
    }
}

impl<T, O> std::fmt::Debug for Batches<T, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").field("db", &self.db).finish()
    }
}

impl<T: Send + 'static, O: Send + 'static> Batches<T, O> {
    /// Batches of `db` written by `apply`; one batch commits at a time.
    pub fn new(
        db: Database,
        apply: impl Fn(&mut DbConnection, &[T]) -> QueryResult<Vec<O>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            db,
            apply: Arc::new(apply),
            waiting: Arc::new(group::Groups::new(1)),
        }
    }

    /// Writes `item` in the next batch; its output once that commits.
    pub async fn write(&self, item: T) -> Result<O, StorageError> {
        let (done, outcome) = oneshot::channel();
        if self.waiting.push(Pending { item, done }) {
            let batches = self.clone();
            tokio::task::spawn_blocking(move || batches.commit_all());
        }
        outcome
            .await
            .map_err(|_| StorageError::Grouped("its batch was lost".into()))?
    }

    /// A committer: commits batches until no item waits. Runs on the
    /// blocking pool.
    fn commit_all(&self) {
        while let Some(batch) = self.waiting.next(MAX_BATCH) {
            let (items, dones): (Vec<T>, Vec<_>) =
                batch.into_iter().map(|p| (p.item, p.done)).unzip();
            // A panic is a bug, perhaps set off by one item: the items of a
            // batch that panicked go again alone, and only the item that
            // panics alone is lost (its caller hears so).
            let outcomes = match self.commit_catching(&items) {
                Some(outcomes) => outcomes.into_iter().map(Some).collect(),
                None if items.len() > 1 => items
                    .iter()
                    .map(|item| {
                        self.commit_catching(std::slice::from_ref(item))
                            .and_then(|mut outcome| outcome.pop())
                    })
                    .collect(),
                None => vec![None],
            };
            for (done, outcome) in dones.into_iter().zip(outcomes) {
                if let Some(outcome) = outcome {
                    let _ = done.send(outcome);
                }
            }
        }
    }

    /// [`Self::commit`], or `None` if it panicked.
    fn commit_catching(&self, items: &[T]) -> Option<Vec<Result<O, StorageError>>> {
        let committed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit(items)));
        if committed.is_err() {
            tracing::error!(
                items = items.len(),
                "a batch panicked; it was not committed"
            );
        }
        committed.ok()
    }

    /// Writes `items` in one transaction, or, when that fails of one
    /// item's accord, each alone: the outcome of each, in order.
    fn commit(&self, items: &[T]) -> Vec<Result<O, StorageError>> {
        let failed = |error: &StorageError| items.iter().map(|_| Err(group::copy(error))).collect();
        // SQLite has one writer: the batch takes its turn with the others.
        let _writer = match self.db.url {
            DatabaseUrl::Sqlite(_) => Some(self.db.sqlite_writer.blocking_lock()),
            DatabaseUrl::Postgres(_) => None,
        };
        let mut pooled = match self.db.pool.get() {
            Ok(pooled) => pooled,
            Err(error) => return failed(&StorageError::Pool(error)),
        };
        let conn = &mut pooled.conn;
        let applied = conn.transaction(|c| {
            let outputs = (self.apply)(c, items)?;
            if outputs.len() == items.len() {
                Ok(outputs)
            } else {
                Err(miscounted(outputs.len(), items.len()))
            }
        });
        pooled.answered = std::time::Instant::now();
        let error = match applied {
            Ok(outputs) => return outputs.into_iter().map(Ok).collect(),
            Err(error) => StorageError::Query(error),
        };
        if items.len() == 1 || error.is_transient() {
            return failed(&error);
        }
        // Some item failed of its own accord: each alone, as if never batched.
        items
            .iter()
            .map(|item| {
                let alone = pooled.conn.transaction(|c| alone(&*self.apply, c, item));
                alone.map_err(StorageError::Query)
            })
            .collect()
    }
}

impl<T: Clone + Send + 'static> Batches<T, bool> {
    /// Inserts `row` in the next batch (its function tells, per row,
    /// whether it was inserted or skipped as a repeat of a stored one), or
    /// returns the stored one that `find` reads: what
    /// [`Database::insert_or_find`] does, with a multi-row insert for a
    /// batch that a repeat does not send back item by item.
    pub async fn insert_or_find<F>(&self, row: T, find: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut DbConnection) -> Result<Option<T>, DieselError> + Send + 'static,
    {
        let inserted = self.write(row.clone()).await;
        self.db.stored_or_found(inserted, row, find).await
    }
}

/// Applies `item` alone.
fn alone<T, O>(apply: &Apply<T, O>, c: &mut DbConnection, item: &T) -> QueryResult<O> {
    let outputs = apply(c, std::slice::from_ref(item))?;
    let count = outputs.len();
    match <[O; 1]>::try_from(outputs) {
        Ok([output]) => Ok(output),
        Err(_) => Err(miscounted(count, 1)),
    }
}

/// The error of a batch function that gave the wrong number of outputs (a bug).
fn miscounted(outputs: usize, items: usize) -> DieselError {
    DieselError::QueryBuilderError(
        format!("a batch of {items} items gave {outputs} outputs").into(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, mpsc};

    use diesel::{
        RunQueryDsl as _, sql_query,
        sql_types::{BigInt, Text},
    };
    use futures_util::future::join_all;

    use super::*;
    use crate::db::{is_unique_violation, multi_row, rows};

    #[derive(diesel::QueryableByName)]
    struct Transaction {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }

    /// Keys written in batches: one multi-row insert per batch, each key
    /// answered with the id of the transaction it was stored in. The key
    /// "held" waits in its batch until the sender `release` is dropped,
    /// having told `running` it runs; the key "boom" panics.
    fn keys(
        db: &Database,
        running: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
    ) -> Batches<String, i64> {
        let gate = Mutex::new((running, release));
        Batches::new(db.clone(), move |c, keys: &[String]| {
            if keys.iter().any(|key| key == "held") {
                let gate = gate
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = gate.0.send(());
                let _ = gate.1.recv();
            }
            assert!(!keys.iter().any(|key| key == "boom"), "a bug");
            let sql = format!("INSERT INTO keys (key) VALUES {}", rows(keys.len(), 1, 1));
            keys.iter()
                .fold(multi_row(sql, keys.len()), |insert, key| {
                    insert.bind::<Text, _>(key.as_str())
                })
                .execute(c)?;
            // On SQLite, whose transactions have no number, the batch's size.
            let id = match c {
                DbConnection::Postgres(_) => {
                    sql_query("SELECT txid_current() AS id")
                        .get_result::<Transaction>(c)?
                        .id
                }
                DbConnection::Sqlite(_) => i64::try_from(keys.len()).unwrap_or(i64::MAX),
            };
            Ok(vec![id; keys.len()])
        })
    }

    fn stored(c: &mut DbConnection) -> Result<Vec<String>, DieselError> {
        #[derive(diesel::QueryableByName)]
        struct Key {
            #[diesel(sql_type = Text)]
            key: String,
        }
        let keys = sql_query("SELECT key FROM keys ORDER BY key").load::<Key>(c)?;
        Ok(keys.into_iter().map(|k| k.key).collect())
    }

    /// Writes "held", and once it holds the committer, `keys` each from a
    /// caller of its own; their outcomes, in order.
    async fn behind_a_held_batch(
        db: &Database,
        keys_of: impl IntoIterator<Item = String>,
    ) -> anyhow::Result<Vec<Result<i64, StorageError>>> {
        let (running, is_running) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let batches = keys(db, running, released);
        let held = tokio::spawn({
            let batches = batches.clone();
            async move { batches.write("held".to_owned()).await }
        });
        tokio::task::spawn_blocking(move || is_running.recv()).await??;
        let writes = join_all(keys_of.into_iter().map(|key| batches.write(key)));
        let released = async {
            tokio::task::yield_now().await;
            drop(release);
        };
        let (outcomes, ()) = tokio::join!(writes, released);
        held.await??;
        Ok(outcomes)
    }

    async fn postgres() -> anyhow::Result<(Database, crate::db::DatabaseUrl)> {
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, 2)?;
        db.write(|c| sql_query("CREATE TABLE keys (key TEXT PRIMARY KEY)").execute(c))
            .await?;
        Ok((db, url))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_that_wait_for_the_committer_are_written_by_one_statement_in_one_transaction()
    -> anyhow::Result<()> {
        let (db, url) = postgres().await?;
        let outcomes = behind_a_held_batch(&db, (0..20).map(|n| format!("key-{n:02}"))).await?;
        let transactions = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
        let distinct: std::collections::BTreeSet<_> = transactions.iter().collect();
        assert_eq!(
            distinct.len(),
            1,
            "one batch for the twenty: {transactions:?}"
        );
        let mut expected: Vec<String> = vec!["held".into()];
        expected.extend((0..20).map(|n| format!("key-{n:02}")));
        assert_eq!(db.read(stored).await?, expected);
        drop(db);
        url.drop_if_exists()
    }

    /// On SQLite too: the items that queue while a batch holds the one
    /// writer go together in the next.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_that_wait_for_the_writer_on_sqlite_are_written_by_one_statement()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 2)?;
        db.write(|c| sql_query("CREATE TABLE keys (key TEXT PRIMARY KEY)").execute(c))
            .await?;
        let outcomes = behind_a_held_batch(&db, (0..20).map(|n| format!("key-{n:02}"))).await?;
        let sizes = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
        assert_eq!(sizes, vec![20; 20], "one batch for the twenty");
        assert_eq!(db.read(stored).await?.len(), 21);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_item_that_fails_fails_alone_and_the_others_of_its_batch_are_stored()
    -> anyhow::Result<()> {
        let (db, url) = postgres().await?;
        db.write(|c| sql_query("INSERT INTO keys (key) VALUES ('taken')").execute(c))
            .await?;
        let keys: Vec<String> = (0..10)
            .map(|n| match n {
                3 | 7 => "taken".to_owned(),
                n => format!("key-{n}"),
            })
            .collect();
        let outcomes = behind_a_held_batch(&db, keys.iter().cloned()).await?;
        for (key, outcome) in keys.iter().zip(outcomes) {
            match outcome {
                Err(StorageError::Query(e)) if key == "taken" => {
                    assert!(is_unique_violation(&e), "{key}: {e:?}");
                }
                Ok(_) if key != "taken" => {}
                other => panic!("{key}: {other:?}"),
            }
        }
        let stored = db.read(stored).await?;
        assert_eq!(stored.len(), 10, "held, taken and eight keys: {stored:?}");
        drop(db);
        url.drop_if_exists()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_item_that_panics_is_lost_alone_and_the_others_of_its_batch_are_stored()
    -> anyhow::Result<()> {
        let (db, url) = postgres().await?;
        let keys = ["a", "boom", "b"].map(String::from);
        let outcomes = behind_a_held_batch(&db, keys.iter().cloned()).await?;
        for (key, outcome) in keys.iter().zip(outcomes) {
            match outcome {
                Err(StorageError::Grouped(_)) if key == "boom" => {}
                Ok(_) if key != "boom" => {}
                other => panic!("{key}: {other:?}"),
            }
        }
        assert_eq!(db.read(stored).await?, ["a", "b", "held"]);
        drop(db);
        url.drop_if_exists()
    }

    #[tokio::test]
    async fn a_function_that_miscounts_its_outputs_stores_nothing() -> anyhow::Result<()> {
        let (db, url) = postgres().await?;
        let batches = Batches::new(db.clone(), |c, keys: &[String]| {
            sql_query("INSERT INTO keys (key) VALUES ($1)")
                .bind::<Text, _>(&keys[0])
                .execute(c)?;
            Ok(Vec::<()>::new())
        });
        let outcome = batches.write("lost".to_owned()).await;
        match outcome {
            Err(error) => assert!(error.to_string().contains("gave 0 outputs"), "{error}"),
            Ok(()) => panic!("stored"),
        }
        assert!(db.read(stored).await?.is_empty());
        drop(db);
        url.drop_if_exists()
    }
}
