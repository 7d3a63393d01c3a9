//! Storing what an aggregate decides. A service's aggregate (a reservation,
//! a payment) turns a command into a [`Transition`]: the next state, the
//! version it was decided on, and the event it announces. The
//! move is stored with a compare-and-set on that version, its event in the
//! outbox of the same transaction; when another writer moved the aggregate
//! first, it is read again and the command decided again.
//!
//! The moves of concurrent commands are stored in batches ([`Batches`]):
//! one compare-and-set statement for all of them, one outbox insert for
//! their events. A batch stores what its moves stored one after the other
//! would: the first move of each aggregate goes in the shared statement,
//! any later move of the same aggregate after it, alone.

use chrono::{DateTime, Utc};
use diesel::{QueryResult, RunQueryDsl as _};
use ssak3_proto::events::v1::Event;

use crate::{
    db::{Batches, Database, DbConnection, Prepared, StorageError, multi_row, returned, rows},
    events::outbox,
    time,
};

/// How often a command is decided again when another writer moved the
/// aggregate between reading and storing it.
const ATTEMPTS: usize = 3;

/// An aggregate its service stores: how a move is written and what it announces.
pub trait Stored: Versioned + Send + 'static {
    /// What a move of this aggregate announces.
    type Event: Clone + Send + 'static;
    /// The envelope of the event `transition` announces, if any.
    fn envelope(transition: &Transition<Self, Self::Event>) -> Option<Event>;
    /// The aggregate's id.
    fn id(&self) -> &str;
    /// Writes each of `moves` whose aggregate still has the version it was
    /// decided on, in one statement (each aggregate appears once): for
    /// each, whether it was written.
    fn update_all(
        conn: &mut DbConnection,
        moves: &[&Transition<Self, Self::Event>],
    ) -> QueryResult<Vec<bool>>;
}

/// A decided move of an aggregate `A`: the aggregate as it will be stored,
/// the version it must still have for the move to apply (compare-and-set),
/// and the event `E` it announces, recorded in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition<A, E> {
    pub expected_version: i64,
    pub next: A,
    pub event: Option<E>,
}

/// An aggregate whose every stored change is one version on.
pub trait Versioned: Clone {
    fn version(&self) -> i64;
    /// Moves the version on by one and stamps the change at `now`.
    fn advance(&mut self, now: DateTime<Utc>);

    /// The move that applies `change` to this aggregate and announces `event`.
    fn moved<E>(
        &self,
        now: DateTime<Utc>,
        event: Option<E>,
        change: impl FnOnce(&mut Self),
    ) -> Outcome<Transition<Self, E>> {
        let mut next = self.clone();
        change(&mut next);
        next.advance(now);
        Outcome::Move(Transition {
            expected_version: self.version(),
            next,
            event,
        })
    }
}

/// What a command does to an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<M> {
    Move(M),
    /// The aggregate is already where the command would take it.
    AlreadyDone,
}

/// Why a command left the aggregate as it was.
#[derive(Debug, thiserror::Error)]
pub enum DecideError<E> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Refused(E),
    /// It kept changing under concurrent writers.
    #[error("kept changing under concurrent writers")]
    Contended,
    /// It is gone (it was read a moment ago).
    #[error("vanished while being changed")]
    Vanished,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A move with the envelope of its event, made on the caller's task (it
/// carries the caller's trace context).
type Move<A> = (Transition<A, <A as Stored>::Event>, Option<Event>);

/// Where the moves of one kind of aggregate are stored, in batches; wakes
/// `events` when a move recorded an event.
pub struct Moves<A: Stored> {
    batches: Batches<Move<A>, bool>,
    events: outbox::Waker,
}

impl<A: Stored> Clone for Moves<A> {
    fn clone(&self) -> Self {
        Self {
            batches: self.batches.clone(),
            events: self.events.clone(),
        }
    }
}

impl<A: Stored> std::fmt::Debug for Moves<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moves")
            .field("batches", &self.batches)
            .finish()
    }
}

impl<A: Stored> Moves<A> {
    pub fn new(db: Database, events: outbox::Waker) -> Self {
        Self {
            batches: Batches::new(db, store_all::<A>),
            events,
        }
    }
}

/// Stores a batch of moves with their events: for each, whether it was
/// stored (false when its aggregate's version had moved on).
fn store_all<A: Stored>(conn: &mut DbConnection, moves: &[Move<A>]) -> QueryResult<Vec<bool>> {
    let mut seen = std::collections::HashSet::with_capacity(moves.len());
    let (first, later): (Vec<usize>, Vec<usize>) =
        (0..moves.len()).partition(|&i| seen.insert(moves[i].0.next.id()));
    let mut stored = vec![false; moves.len()];
    let firsts: Vec<_> = first.iter().map(|&i| &moves[i].0).collect();
    for (&i, written) in first.iter().zip(A::update_all(conn, &firsts)?) {
        stored[i] = written;
    }
    for i in later {
        stored[i] = A::update_all(conn, &[&moves[i].0])?
            .first()
            .copied()
            .unwrap_or(false);
    }
    let events: Vec<Event> = moves
        .iter()
        .zip(&stored)
        .filter(|(_, stored)| **stored)
        .filter_map(|((_, event), _)| event.clone())
        .collect();
    outbox::record_all(conn, &events)?;
    Ok(stored)
}

/// The compare-and-set of a batch of moves, for [`Stored::update_all`]:
/// `update` is an `UPDATE` of `table` that moves the rows of `ids` still at
/// their expected versions and returns the ids it moved `AS id`. On
/// PostgreSQL the rows are locked first, in the order of their ids: an
/// `UPDATE … FROM` locks rows in whatever order its plan visits them, and
/// two replicas' batches moving the same rows could deadlock. For each id,
/// whether it was moved.
pub fn compare_and_set(
    conn: &mut DbConnection,
    (table, key): (&str, &str),
    ids: &[&str],
    update: Prepared<'_>,
) -> QueryResult<Vec<bool>> {
    if matches!(conn, DbConnection::Postgres(_)) && ids.len() > 1 {
        let lock = format!(
            "SELECT 1 FROM {table} WHERE {key} IN {} ORDER BY {key} FOR NO KEY UPDATE",
            rows(1, ids.len(), 1)
        );
        ids.iter()
            .fold(multi_row(lock, ids.len()), |lock, id| {
                lock.bind::<diesel::sql_types::Text, _>(*id)
            })
            .execute(conn)?;
    }
    returned(conn, update, ids.iter().copied())
}

/// Decides `command` on `current` and stores the move; on a lost race,
/// reads the aggregate again with `reload` and decides again. Returns the
/// aggregate as stored.
pub async fn decide<A, E, C, R, Fut>(
    moves: &Moves<A>,
    mut current: A,
    command: C,
    reload: R,
) -> Result<A, DecideError<E>>
where
    A: Stored,
    C: Fn(&A, DateTime<Utc>) -> Result<Outcome<Transition<A, A::Event>>, E>,
    R: Fn() -> Fut,
    Fut: Future<Output = Result<Option<A>, StorageError>>,
{
    for _ in 0..ATTEMPTS {
        let decided = match command(&current, time::now()).map_err(DecideError::Refused)? {
            Outcome::AlreadyDone => return Ok(current),
            Outcome::Move(decided) => decided,
        };
        let event = A::envelope(&decided);
        let announces = event.is_some();
        let next = decided.next.clone();
        if moves.batches.write((decided, event)).await? {
            if announces {
                moves.events.wake();
            }
            return Ok(next);
        }
        current = reload().await?.ok_or(DecideError::Vanished)?;
    }
    Err(DecideError::Contended)
}

#[cfg(test)]
mod tests {
    use diesel::{
        QueryableByName, RunQueryDsl as _, sql_query,
        sql_types::{BigInt, Text},
    };

    use super::*;

    /// An aggregate that is only a version.
    #[derive(Clone, Debug)]
    struct Thing {
        id: String,
        version: i64,
    }

    impl Versioned for Thing {
        fn version(&self) -> i64 {
            self.version
        }

        fn advance(&mut self, _now: DateTime<Utc>) {
            self.version += 1;
        }
    }

    impl Stored for Thing {
        type Event = ();

        fn envelope(transition: &Transition<Self, ()>) -> Option<Event> {
            let next = &transition.next;
            transition.event.map(|()| Event {
                event_id: format!("{}-{}", next.id, next.version),
                event_type: "thing.moved".into(),
                reservation_id: next.id.clone(),
                ..Event::default()
            })
        }

        fn id(&self) -> &str {
            &self.id
        }

        fn update_all(
            conn: &mut DbConnection,
            moves: &[&Transition<Self, ()>],
        ) -> QueryResult<Vec<bool>> {
            let sql = format!(
                "UPDATE things SET version = moved.column3 FROM (VALUES {}) AS moved \
                 WHERE things.id = moved.column1 AND things.version = moved.column2 \
                 RETURNING things.id AS id",
                rows(moves.len(), 3, 1)
            );
            let update = moves.iter().fold(multi_row(sql, moves.len()), |update, m| {
                update
                    .bind::<Text, _>(m.next.id.as_str())
                    .bind::<BigInt, _>(m.expected_version)
                    .bind::<BigInt, _>(m.next.version)
            });
            let ids: Vec<&str> = moves.iter().map(|m| m.next.id.as_str()).collect();
            compare_and_set(conn, ("things", "id"), &ids, update)
        }
    }

    fn moved(id: &str, from: i64) -> Transition<Thing, ()> {
        let thing = Thing {
            id: id.into(),
            version: from,
        };
        match thing.moved(time::now(), Some(()), |_| {}) {
            Outcome::Move(transition) => transition,
            Outcome::AlreadyDone => unreachable!("a move"),
        }
    }

    /// Two moves of one aggregate decided on the same version, in one batch:
    /// the first is stored, the second finds the version moved on, as one
    /// after the other; one event each for what was stored, in order.
    #[tokio::test]
    async fn a_batch_stores_what_its_moves_one_after_the_other_store() -> anyhow::Result<()> {
        #[derive(QueryableByName)]
        struct Announced {
            #[diesel(sql_type = Text)]
            event_id: String,
        }
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, 1)?;
        db.migrate(crate::db::Schema {
            postgres: &[outbox::POSTGRES_MIGRATIONS],
            sqlite: &[outbox::SQLITE_MIGRATIONS],
        })
        .await?;
        let (stored, announced) = db
            .transaction(|c| {
                sql_query("CREATE TABLE things (id TEXT PRIMARY KEY, version BIGINT NOT NULL)")
                    .execute(c)?;
                sql_query("INSERT INTO things VALUES ('a', 1), ('b', 1)").execute(c)?;
                let batch = [moved("a", 1), moved("a", 1), moved("b", 1), moved("b", 7)].map(|m| {
                    let event = Thing::envelope(&m);
                    (m, event)
                });
                let stored = store_all(c, &batch)?;
                let announced =
                    sql_query("SELECT event_id FROM outbox ORDER BY seq").load::<Announced>(c)?;
                Ok((stored, announced))
            })
            .await?;
        drop(db);
        url.drop_if_exists()?;
        assert_eq!(stored, [true, false, true, false]);
        let announced: Vec<String> = announced.into_iter().map(|a| a.event_id).collect();
        assert_eq!(announced, ["a-2", "b-2"]);
        Ok(())
    }

    /// A batch moving aggregates another transaction holds waits with the
    /// rows before them in id order already locked, whatever the order of
    /// its moves: two replicas' batches lock in one order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_locks_its_rows_in_the_order_of_their_ids() -> anyhow::Result<()> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, 4)?;
        db.write(|c| {
            sql_query("CREATE TABLE things (id TEXT PRIMARY KEY, version BIGINT NOT NULL)")
                .execute(c)?;
            sql_query("INSERT INTO things VALUES ('a', 1), ('b', 1)").execute(c)
        })
        .await?;
        // Another transaction holds b.
        let (held, is_held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = tokio::spawn({
            let db = db.clone();
            async move {
                db.transaction(move |c| {
                    sql_query("SELECT id FROM things WHERE id = 'b' FOR UPDATE").execute(c)?;
                    let _ = held.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || is_held.recv()).await??;
        // The batch lists b first.
        let mover = tokio::spawn({
            let db = db.clone();
            async move {
                db.transaction(|c| Thing::update_all(c, &[&moved("b", 1), &moved("a", 1)]))
                    .await
            }
        });
        // Until the batch waits for b (or five seconds pass).
        for _ in 0..100 {
            let waiting = db
                .read(|c| {
                    sql_query(
                        "SELECT COUNT(*) AS n FROM pg_stat_activity \
                         WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )
                    .get_result::<Count>(c)
                })
                .await?;
            if waiting.n > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let a_is_locked = db
            .read(|c| {
                let taken =
                    sql_query("SELECT id FROM things WHERE id = 'a' FOR UPDATE NOWAIT").execute(c);
                Ok(taken.is_err())
            })
            .await?;
        drop(release);
        holder.await??;
        let moved = mover.await??;
        drop(db);
        url.drop_if_exists()?;
        assert!(a_is_locked, "a was not locked before b");
        assert_eq!(moved, [true, true]);
        Ok(())
    }
}
