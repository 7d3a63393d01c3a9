//! Change signals for live streams, from every replica to every replica.
//!
//! A service's replicas share one database, and a watcher on any replica
//! must hear of every change of its subscriber, whichever replica stored it.
//! So the signal travels with the commit, not with the work a replica
//! happened to do: the transaction that stores a change calls
//! [`Changes::mark`], which on PostgreSQL is a `NOTIFY` that the server
//! delivers to every replica's listener when (and only if) the transaction
//! commits, in commit order. On SQLite the service is one process, and
//! [`Changes::committed`], called after the commit, delivers it there.
//!
//! Why not a queue per replica bound to the event exchange: a watcher
//! streams what is *stored*, and the event reaches the other replicas
//! before the replica consuming it has stored anything; they would read too
//! early and miss it.
//!
//! A signal only says "something of this subscriber changed, at this
//! position"; the watcher reads the store to learn what. Once the listener
//! listens, and again whenever it lost its connection (signals may have been
//! missed) and listens anew, it sends [`Signal::Resync`]: every watcher
//! reads the store again.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::NaiveDateTime;
use diesel::{QueryResult, RunQueryDsl as _, sql_types::Text};
use tokio::sync::broadcast;

use crate::db::{DatabaseUrl, DbConnection};

/// What a replica hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `subscriber` has a change at `position`.
    Changed {
        subscriber: String,
        position: NaiveDateTime,
    },
    /// Signals may have been missed: every watcher should read the store again.
    Resync,
}

/// A service's change signals: marking them, and hearing them.
#[derive(Clone, Debug)]
pub struct Changes {
    channel: String,
    postgres: bool,
    signals: broadcast::Sender<Signal>,
    _listening: Arc<Listening>,
}

/// Signals held for a receiver that is slow to read them; beyond this it
/// gets `Lagged` and resynchronises.
const BUFFER: usize = 4_096;
/// How often the listener looks for signals the server sent.
const POLL: Duration = Duration::from_millis(5);
/// How often an idle listener checks that its connection still works.
const PING: Duration = Duration::from_secs(5);

/// Stops the listener when the last handle goes.
#[derive(Debug)]
struct Listening(Arc<AtomicBool>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Changes {
    /// The signals of `service`'s database at `url`: listened to on
    /// PostgreSQL (on a connection of its own), delivered in-process on SQLite.
    pub fn start(url: &DatabaseUrl, service: &str) -> Self {
        let (signals, _) = broadcast::channel(BUFFER);
        let channel = format!("ssak3_{service}_changes");
        let stopped = Arc::new(AtomicBool::new(false));
        let postgres = matches!(url, DatabaseUrl::Postgres(_));
        if let DatabaseUrl::Postgres(url) = url {
            let (url, channel, signals, stopped) = (
                url.clone(),
                channel.clone(),
                signals.clone(),
                Arc::clone(&stopped),
            );
            std::thread::Builder::new()
                .name(format!("{service}-changes"))
                .spawn(move || listen(&url, &channel, &signals, &stopped))
                .map(drop)
                .unwrap_or_else(|error| {
                    tracing::error!(%error, "cannot start the change listener");
                });
        }
        Self {
            channel,
            postgres,
            signals,
            _listening: Arc::new(Listening(stopped)),
        }
    }

    /// Marks a change of `subscriber` at `position`, inside the transaction
    /// that stores it: on PostgreSQL every replica hears of it at commit.
    pub fn mark(
        &self,
        conn: &mut DbConnection,
        subscriber: &str,
        position: NaiveDateTime,
    ) -> QueryResult<()> {
        self.mark_latest(conn, [(subscriber, position)])
    }

    /// Marks the changes of a transaction that stores several, in one
    /// statement: each subscriber once, at its latest position (a watcher
    /// woken reads the store from the last position it sent, so it misses
    /// none of the earlier ones).
    pub fn mark_latest<'a>(
        &self,
        conn: &mut DbConnection,
        changes: impl IntoIterator<Item = (&'a str, NaiveDateTime)>,
    ) -> QueryResult<()> {
        if !self.postgres {
            return Ok(());
        }
        let mut latest = std::collections::BTreeMap::new();
        for (subscriber, position) in changes {
            let at = latest.entry(subscriber).or_insert(position);
            *at = (*at).max(position);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let count = latest.len();
        let sql = format!(
            "SELECT pg_notify($1, payload) FROM (VALUES {}) AS signals (payload)",
            crate::db::rows(count, 1, 2)
        );
        latest
            .into_iter()
            .fold(
                crate::db::multi_row(sql, count).bind::<Text, _>(&self.channel),
                |statement, (subscriber, position)| {
                    statement.bind::<Text, _>(payload(subscriber, position))
                },
            )
            .execute(conn)
            .map(drop)
    }

    /// After the transaction that marked a change committed: on SQLite (one
    /// process), this is when the watchers hear of it.
    pub fn committed(&self, subscriber: &str, position: NaiveDateTime) {
        if !self.postgres {
            let _ = self.signals.send(Signal::Changed {
                subscriber: subscriber.to_owned(),
                position,
            });
        }
    }

    /// Every signal from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }
}

fn payload(subscriber: &str, position: NaiveDateTime) -> String {
    format!("{} {subscriber}", position.and_utc().timestamp_micros())
}

fn parse(payload: &str) -> Option<Signal> {
    let (micros, subscriber) = payload.split_once(' ')?;
    let position = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?.naive_utc();
    Some(Signal::Changed {
        subscriber: subscriber.to_owned(),
        position,
    })
}

/// The listener's loop (a thread of its own: libpq is blocking): connect,
/// LISTEN, hand on what arrives; after a lost connection, reconnect and
/// tell everyone to resynchronise.
fn listen(url: &str, channel: &str, signals: &broadcast::Sender<Signal>, stopped: &AtomicBool) {
    use diesel::Connection as _;
    let mut failures = 0u32;
    let mut first = true;
    while !stopped.load(Ordering::Relaxed) {
        let connected = diesel::PgConnection::establish(url)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| {
                // Named after its channel in pg_stat_activity.
                diesel::sql_query("SELECT set_config('application_name', $1, false)")
                    .bind::<Text, _>(channel)
                    .execute(&mut conn)
                    .map_err(|e| e.to_string())?;
                diesel::sql_query(format!("LISTEN \"{channel}\""))
                    .execute(&mut conn)
                    .map_err(|e| e.to_string())?;
                Ok(conn)
            });
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                failures += 1;
                let delay = crate::config::backoff(100, 5_000, failures);
                tracing::warn!(%error, retry_in = ?delay, "change listener cannot connect");
                std::thread::sleep(delay);
                continue;
            }
        };
        failures = 0;
        if !first {
            tracing::info!("change listener reconnected");
        }
        first = false;
        // Whatever committed before LISTEN took effect went unheard, also
        // on the first connection (a watch may open before it): read again.
        let _ = signals.send(Signal::Resync);
        let mut pinged = std::time::Instant::now();
        let lost = loop {
            if stopped.load(Ordering::Relaxed) {
                return;
            }
            let mut heard = false;
            let mut failed = None;
            for notification in conn.notifications_iter() {
                match notification {
                    Ok(notification) => {
                        heard = true;
                        if let Some(signal) = parse(&notification.payload) {
                            let _ = signals.send(signal);
                        }
                    }
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                }
            }
            if let Some(error) = failed {
                break error;
            }
            if pinged.elapsed() >= PING {
                pinged = std::time::Instant::now();
                if let Err(error) = diesel::sql_query("SELECT 1").execute(&mut conn) {
                    break error;
                }
            }
            if !heard {
                std::thread::sleep(POLL);
            }
        };
        tracing::warn!(error = %lost, "change listener lost its connection");
    }
}

#[cfg(test)]
mod tests {
    use diesel::Connection as _;

    use super::*;
    use crate::db::Database;

    async fn next(signals: &mut broadcast::Receiver<Signal>) -> Option<Signal> {
        tokio::time::timeout(Duration::from_secs(10), signals.recv())
            .await
            .ok()?
            .ok()
    }

    /// Listeners connect in the background; a first round trip shows they
    /// listen. Each round's mark is heard after every earlier one (commit
    /// order), so none is left over for what the test hears next.
    async fn listening(replicas: &[&Changes], db: &Database) -> anyhow::Result<()> {
        let mut receivers: Vec<_> = replicas.iter().map(|c| c.subscribe()).collect();
        for round in 0_u32.. {
            let marker = replicas[0].clone();
            let ready = format!("ready-{round}");
            let mark = ready.clone();
            db.write(move |c| marker.mark(c, &mark, NaiveDateTime::default()))
                .await?;
            let mut all = true;
            for receiver in &mut receivers {
                let heard = tokio::time::timeout(Duration::from_millis(200), async {
                    loop {
                        match receiver.recv().await {
                            Ok(Signal::Changed { subscriber, .. }) if subscriber == ready => {
                                return true;
                            }
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => return false,
                        }
                    }
                })
                .await;
                all &= heard == Ok(true);
            }
            if all {
                break;
            }
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_replica_hears_a_change_when_it_commits_and_never_if_rolled_back()
    -> anyhow::Result<()> {
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, 2)?;
        let (one, two) = (Changes::start(&url, "test"), Changes::start(&url, "test"));
        listening(&[&one, &two], &db).await?;
        let (mut heard_one, mut heard_two) = (one.subscribe(), two.subscribe());
        let position = crate::time::now().naive_utc();

        let marker = one.clone();
        let rolled_back = db
            .transaction(move |c| {
                marker.mark(c, "customer:bob", position)?;
                Err::<(), _>(diesel::result::Error::RollbackTransaction)
            })
            .await;
        assert!(rolled_back.is_err());
        let marker = one.clone();
        db.transaction(move |c| marker.mark(c, "customer:alice", position))
            .await?;
        let expected = Some(Signal::Changed {
            subscriber: "customer:alice".into(),
            position,
        });
        assert_eq!(next(&mut heard_one).await, expected);
        assert_eq!(next(&mut heard_two).await, expected, "the other replica");
        drop((one, two, db));
        url.drop_if_exists()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listener_that_lost_its_connection_says_resync_and_listens_again()
    -> anyhow::Result<()> {
        let url = crate::db::scratch_postgres()?;
        let DatabaseUrl::Postgres(raw) = &url else {
            anyhow::bail!("a PostgreSQL URL")
        };
        let db = Database::connect(&url, 1)?;
        let changes = Changes::start(&url, "test");
        listening(&[&changes], &db).await?;
        let mut heard = changes.subscribe();
        let mut admin = diesel::PgConnection::establish(raw)?;
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'ssak3_test_changes'",
        )
        .execute(&mut admin)?;
        drop(admin);
        assert_eq!(next(&mut heard).await, Some(Signal::Resync));
        listening(&[&changes], &db).await?;
        drop((changes, db));
        url.drop_if_exists()
    }

    #[tokio::test]
    async fn on_sqlite_the_change_is_heard_once_committed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let changes = Changes::start(&DatabaseUrl::Sqlite(dir.path().join("x.db")), "test");
        let mut heard = changes.subscribe();
        let position = crate::time::now().naive_utc();
        changes.committed("customer:alice", position);
        assert_eq!(
            next(&mut heard).await,
            Some(Signal::Changed {
                subscriber: "customer:alice".into(),
                position
            })
        );
        Ok(())
    }

    #[test]
    fn payloads_round_trip() {
        let position = chrono::DateTime::from_timestamp_micros(1_795_000_000_123_456)
            .map(|t| t.naive_utc())
            .unwrap_or_default();
        assert_eq!(
            parse(&payload("company:acme co", position)),
            Some(Signal::Changed {
                subscriber: "company:acme co".into(),
                position
            })
        );
        assert_eq!(parse("garbage"), None);
    }
}
