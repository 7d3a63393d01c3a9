//! Storing what an aggregate decides. A service's aggregate (a reservation,
//! a payment) turns a command into a [`Transition`]: the next state, the
//! version it was decided on, and the event it announces. The
//! move is stored with a compare-and-set on that version, its event in the
//! outbox of the same transaction; when another writer moved the aggregate
//! first, it is read again and the command decided again.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use ssak3_proto::events::v1::Event;

use crate::{
    db::{Database, DbConnection, StorageError},
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
    /// Writes `transition` if the stored version is still the one it was
    /// decided on (and `event`, when given, to the outbox); false otherwise.
    fn apply(
        conn: &mut DbConnection,
        transition: &Transition<Self, Self::Event>,
        event: Option<&Event>,
    ) -> QueryResult<bool>;
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

/// Decides `command` on `current` and stores the move; on a lost race,
/// reads the aggregate again with `reload` and decides again. Wakes `events`
/// when a move recorded an event. Returns the aggregate as stored.
pub async fn decide<A, E, C, R, Fut>(
    db: &Database,
    events: &outbox::Waker,
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
        if store(db, events, decided.clone()).await? {
            return Ok(decided.next);
        }
        current = reload().await?.ok_or(DecideError::Vanished)?;
    }
    Err(DecideError::Contended)
}

/// Stores one move (with its outbox row, if it announces an event) in a
/// transaction shared with other callers' writes (group commit). False
/// when the version had moved on.
async fn store<A: Stored>(
    db: &Database,
    events: &outbox::Waker,
    decided: Transition<A, A::Event>,
) -> Result<bool, StorageError> {
    let event = A::envelope(&decided);
    let announces = event.is_some();
    let stored = db
        .grouped(move |c| A::apply(c, &decided, event.as_ref()))
        .await?;
    if stored && announces {
        events.wake();
    }
    Ok(stored)
}
