//! Database access for PostgreSQL (production) and SQLite (the embedded
//! default) through one diesel connection type, with migrations embedded in
//! each service and run at start-up.
//!
//! diesel is synchronous: queries run on tokio's blocking pool. SQLite allows
//! one writer at a time, so write transactions on SQLite take an async lock
//! first; that also keeps a deferred transaction from failing with
//! `SQLITE_BUSY` when it upgrades from reading to writing.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use diesel::{
    PgConnection, SqliteConnection,
    connection::SimpleConnection,
    r2d2::{self, ManageConnection},
    result::{DatabaseErrorKind, Error as DieselError},
};
use diesel::{backend::Backend, migration::MigrationSource};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use tokio::sync::Mutex;

mod batch;
mod group;
mod prepared;

pub use batch::Batches;
pub use prepared::{Prepared, multi_row, prepared, returned, rows};

/// One connection to either backend; queries written against it run on both.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl DbConnection {
    /// The locking clause of a query that claims rows: `FOR UPDATE SKIP
    /// LOCKED` on PostgreSQL, where replicas claim side by side and each
    /// passes over the rows another is claiming; nothing on SQLite, whose
    /// one writer claims them one statement at a time.
    pub fn skip_locked(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Self::Sqlite(_) => "",
        }
    }
}

/// Where a service keeps its data, parsed from `postgres://…` or `sqlite://PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Parses a database URL; the error says which forms are accepted.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|path| !path.is_empty())
        {
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else {
            anyhow::bail!(
                "database URL `{}` is not supported: use postgres://USER@HOST:PORT/DB or sqlite://PATH",
                redact(url)
            )
        }
    }

    /// The configured database, or else `DATA_DIR/<service>.db`.
    pub fn for_service(config: &crate::config::Config, service: &str) -> anyhow::Result<Self> {
        match &config.database_url {
            Some(url) => Self::parse(url),
            None => Ok(Self::Sqlite(config.data_dir.join(format!("{service}.db")))),
        }
    }

    /// The database of one of several services sharing this URL: the
    /// PostgreSQL database name or the SQLite file name gets `_<service>`
    /// appended (`…/ssak3` → `…/ssak3_payment`; `x.db` → `x_payment.db`).
    pub fn for_one_of_many(&self, service: &str) -> Self {
        match self {
            Self::Postgres(url) => {
                let (base, query) = url
                    .split_once('?')
                    .map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
                let mut named = format!("{base}_{service}");
                if let Some(query) = query {
                    named = format!("{named}?{query}");
                }
                Self::Postgres(named)
            }
            Self::Sqlite(path) => {
                let stem = path
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                let name = match path.extension() {
                    Some(ext) => format!("{stem}_{service}.{}", ext.to_string_lossy()),
                    None => format!("{stem}_{service}"),
                };
                Self::Sqlite(path.with_file_name(name))
            }
        }
    }

    /// The URL as configuration takes it.
    pub fn to_url(&self) -> String {
        match self {
            Self::Postgres(url) => url.clone(),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// Creates the PostgreSQL database if the server does not have it yet
    /// (connecting to the server's `postgres` database to do so). SQLite
    /// files are created when opened.
    pub fn create_if_missing(&self) -> anyhow::Result<()> {
        use diesel::RunQueryDsl as _;
        let Some((mut conn, name)) = self.server()? else {
            return Ok(());
        };
        #[derive(diesel::QueryableByName)]
        struct Found {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let found: Found =
            diesel::sql_query("SELECT COUNT(*) AS n FROM pg_database WHERE datname = $1")
                .bind::<diesel::sql_types::Text, _>(&name)
                .get_result(&mut conn)?;
        if found.n == 0 {
            match diesel::sql_query(format!("CREATE DATABASE {}", quoted(&name)?))
                .execute(&mut conn)
            {
                Ok(_) => tracing::info!(database = name, "database created"),
                // Another process created it meanwhile.
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {}
                Err(e) => return Err(anyhow::anyhow!("cannot create database {name}: {e}")),
            }
        }
        Ok(())
    }

    /// Drops the PostgreSQL database, closing its connections (scratch
    /// databases of benchmarks). SQLite files go with their directory.
    pub fn drop_if_exists(&self) -> anyhow::Result<()> {
        use diesel::RunQueryDsl as _;
        if let Some((mut conn, name)) = self.server()? {
            diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quoted(&name)?
            ))
            .execute(&mut conn)
            .with_context(|| format!("cannot drop database {name}"))?;
        }
        Ok(())
    }

    /// A connection to the server's `postgres` database and the name of
    /// this one; None for SQLite.
    fn server(&self) -> anyhow::Result<Option<(PgConnection, String)>> {
        use diesel::Connection as _;
        let Self::Postgres(url) = self else {
            return Ok(None);
        };
        let (base, query) = url
            .split_once('?')
            .map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
        let Some((server, name)) = base
            .rsplit_once('/')
            .filter(|(s, n)| s.contains("://") && !s.ends_with('/') && !n.is_empty())
        else {
            anyhow::bail!("database URL {} names no database", self.redacted());
        };
        let admin = match query {
            Some(query) => format!("{server}/postgres?{query}"),
            None => format!("{server}/postgres"),
        };
        let conn = PgConnection::establish(&admin).map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the database server at {}: {}",
                redact(&admin),
                e.to_string().trim_end()
            )
        })?;
        Ok(Some((conn, name.to_owned())))
    }

    /// The URL with any password replaced, for messages and logs.
    pub fn redacted(&self) -> String {
        match self {
            Self::Postgres(url) => redact(url),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }
}

/// `name` as a quoted identifier, for the statements that cannot bind it.
fn quoted(name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "database name {name:?} may hold only letters, digits, '_' and '-'"
    );
    Ok(format!("\"{name}\""))
}

/// Creates `dir` if needed and checks that files can be written in it.
pub fn ensure_writable_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let probe = dir.join(".ssak3-write-check");
    std::fs::write(&probe, b"")
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Hides the password of `scheme://user:password@host/…`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

/// Opens connections of the configured backend for the pool.
#[derive(Debug)]
struct ConnectionFactory {
    url: DatabaseUrl,
}

/// A pooled connection and when it last answered.
struct Pooled {
    conn: DbConnection,
    answered: std::time::Instant,
}

/// A connection that answered this recently is handed out without a check.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

impl ManageConnection for ConnectionFactory {
    type Connection = Pooled;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<Pooled, r2d2::Error> {
        Ok(Pooled {
            conn: self.open()?,
            answered: std::time::Instant::now(),
        })
    }

    /// `SELECT 1` only for a connection idle for a while (the server may have
    /// restarted meanwhile); one in steady use is proven by its last answer.
    fn is_valid(&self, pooled: &mut Pooled) -> Result<(), r2d2::Error> {
        if pooled.answered.elapsed() < TRUSTED_FOR {
            return Ok(());
        }
        pooled
            .conn
            .batch_execute("SELECT 1")
            .map_err(r2d2::Error::QueryError)?;
        pooled.answered = std::time::Instant::now();
        Ok(())
    }

    fn has_broken(&self, pooled: &mut Pooled) -> bool {
        use diesel::r2d2::R2D2Connection as _;
        pooled.conn.is_broken()
    }
}

impl ConnectionFactory {
    fn open(&self) -> Result<DbConnection, r2d2::Error> {
        use diesel::Connection as _;
        match &self.url {
            DatabaseUrl::Postgres(url) => PgConnection::establish(url)
                .map(DbConnection::Postgres)
                .map_err(r2d2::Error::ConnectionError),
            DatabaseUrl::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())
                    .map_err(r2d2::Error::ConnectionError)?;
                // Each connection keeps a page cache of its own, 2 MiB by
                // default, filled as the file grows and never given back:
                // eight connections in four services made 64 MiB of heap.
                // 256 KiB bounds a service's pool at 2 MiB; the pages stay
                // in the kernel's file cache either way.
                //
                // Statement journals (a batch's multi-row statement inside
                // its transaction) and sorts go to memory: on files, every
                // one larger than 64 KiB or the page cache was a file
                // created, written and unlinked, some 60 a second under
                // load: about a tenth of the one-process system's CPU. In
                // memory they have no bound, which the statements served
                // here keep (a batch, a page of a list); migrations, which
                // may sort a whole table, use files (`Database::migrate`).
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
                     PRAGMA cache_size = -256; PRAGMA temp_store = MEMORY;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }
}

/// What can go wrong running a query.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no database connection: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error(transparent)]
    Query(#[from] DieselError),
    #[error("database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// No connection could be had for a group of writes (see [`Database::grouped`]).
    #[error("no database connection: {0}")]
    NoConnection(String),
    /// A group of writes failed with an error that is not the database's.
    #[error("grouped write failed: {0}")]
    Grouped(String),
}

impl StorageError {
    /// True when the same statement may well succeed shortly: no connection
    /// could be had (the server is restarting, unreachable or out of
    /// connections), the connection was lost (an administrator shutdown, a
    /// restart, a network fault), the server is read-only (a failover in
    /// progress), the transaction lost a serialization race or was ended to
    /// break a deadlock, or SQLite's file was locked past the busy timeout.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) | Self::NoConnection(_) => true,
            Self::Query(DieselError::DatabaseError(kind, information)) => match kind {
                DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::SerializationFailure
                | DatabaseErrorKind::ReadOnlyTransaction => true,
                // SQLITE_BUSY and SQLITE_LOCKED have no kind of their own,
                // nor has PostgreSQL's deadlock_detected (40P01): the
                // transaction it ended may well go through when run again.
                DatabaseErrorKind::Unknown => {
                    let message = information.message();
                    message.contains("database is locked")
                        || message.contains("database table is locked")
                        || message.contains("deadlock detected")
                }
                _ => false,
            },
            Self::Query(_) | Self::Task(_) | Self::Grouped(_) => false,
        }
    }
}

/// True when `error` is a unique-constraint violation (on either backend).
pub fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// A service's schema: the migrations of the tables it owns, and of the
/// shared tables it uses (the outbox, the inbox), which are written once in
/// this crate. Applied in version order, per backend.
#[derive(Clone, Copy)]
pub struct Schema {
    pub postgres: &'static [EmbeddedMigrations],
    pub sqlite: &'static [EmbeddedMigrations],
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("sets", &self.postgres.len())
            .finish()
    }
}

/// Several migration sets as one source, in version order.
struct Combined(&'static [EmbeddedMigrations]);

impl<DB: Backend> MigrationSource<DB> for Combined
where
    EmbeddedMigrations: MigrationSource<DB>,
{
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<DB>>>> {
        let mut all = Vec::new();
        for set in self.0 {
            all.extend(MigrationSource::<DB>::migrations(set)?);
        }
        all.sort_by(|a, b| a.name().version().cmp(&b.name().version()));
        Ok(all)
    }
}

/// The PostgreSQL advisory lock key that serialises migrations ("ssak3mig").
const MIGRATION_LOCK: i64 = 0x7373_616b_336d_6967;

/// Groups of writes committed at once (see [`Database::grouped`]).
const COMMITTERS: usize = 1;

/// A pool of connections to one service's database.
#[derive(Clone)]
pub struct Database {
    pool: r2d2::Pool<ConnectionFactory>,
    url: DatabaseUrl,
    /// Held by write transactions on SQLite (see the module docs); unused on PostgreSQL.
    sqlite_writer: Arc<Mutex<()>>,
    /// Writes waiting to be committed in groups ([`Database::grouped`]).
    groups: Arc<group::Groups>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url.redacted())
            .finish()
    }
}

impl Database {
    /// Opens a pool and checks that the database answers. A SQLite file and
    /// its directory are created when missing.
    pub fn connect(url: &DatabaseUrl, max_connections: u32) -> anyhow::Result<Self> {
        if let DatabaseUrl::Sqlite(path) = url
            && let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
        {
            ensure_writable_dir(dir)?;
        }
        let max_size = match url {
            DatabaseUrl::Postgres(_) => max_connections,
            // Readers run concurrently under WAL; more connections buy nothing.
            DatabaseUrl::Sqlite(_) => max_connections.min(8),
        };
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(5))
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build(ConnectionFactory { url: url.clone() })
            .with_context(|| format!("cannot open database {}", url.redacted()))?;
        // One group commits at a time: queued writes then make large
        // groups (one committer booked faster than two or four,
        // docs/group-commit.md).
        Ok(Self {
            pool,
            url: url.clone(),
            sqlite_writer: Arc::new(Mutex::new(())),
            groups: Arc::new(group::Groups::new(COMMITTERS)),
        })
    }

    /// Runs read-only queries on the blocking pool.
    pub async fn read<T, F>(&self, query: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DieselError> + Send + 'static,
    {
        self.on_blocking_pool(query).await
    }

    async fn on_blocking_pool<T, F>(&self, query: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DieselError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut pooled = pool.get()?;
            let answer = query(&mut pooled.conn)?;
            pooled.answered = std::time::Instant::now();
            Ok(answer)
        })
        .await?
    }

    /// Runs `work` in one transaction on the blocking pool: all of it commits or none.
    pub async fn transaction<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DieselError> + Send + 'static,
    {
        use diesel::Connection as _;
        self.write(move |conn| conn.transaction(work)).await
    }

    /// Runs `work` in a transaction shared with the writes of other callers
    /// made meanwhile (group commit on PostgreSQL, see [`group`]; on SQLite
    /// a transaction of its own): for the caller, exactly
    /// what [`Database::transaction`] does — all of its work is stored or
    /// none, and it gets its own outcome — at a fraction of the commits.
    /// `work` may run more than once (a run in a group that then rolls back
    /// is not stored), so it must keep its effects inside the transaction.
    pub async fn grouped<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> Result<T, DieselError> + Send + 'static,
    {
        if let DatabaseUrl::Sqlite(_) = self.url {
            // A SQLite commit is an append to its WAL: grouping there sped
            // bookings up but left the consumers behind (docs/group-commit.md).
            return self.transaction(work).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let value = Arc::new(std::sync::Mutex::new(None));
        let kept = Arc::clone(&value);
        let write = group::Write::new(
            move |c| {
                let stored = work(c)?;
                *kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stored);
                Ok(())
            },
            move |outcome| {
                let _ = tx.send(outcome);
            },
        );
        if self.groups.push(write) {
            let db = self.clone();
            tokio::task::spawn_blocking(move || db.commit_groups());
        }
        rx.await
            .map_err(|_| StorageError::Grouped("its group was lost".into()))??;
        value
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or_else(|| StorageError::Grouped("stored without a value".into()))
    }

    /// Runs one writing statement, atomic on its own, without a transaction
    /// around it: one round trip instead of three.
    pub async fn write<T, F>(&self, statement: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<T, DieselError> + Send + 'static,
    {
        let _writer = match self.url {
            DatabaseUrl::Sqlite(_) => Some(self.sqlite_writer.lock().await),
            DatabaseUrl::Postgres(_) => None,
        };
        self.on_blocking_pool(statement).await
    }

    /// Inserts `row`, or, when a unique constraint says it already exists,
    /// returns the stored one that `find` reads. This is how every
    /// idempotency key in Ssak3 is honoured.
    pub async fn insert_or_find<T, I, F>(
        &self,
        row: T,
        insert: I,
        find: F,
    ) -> Result<T, StorageError>
    where
        T: Clone + Send + 'static,
        I: Fn(&mut DbConnection, &T) -> Result<(), DieselError> + Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<Option<T>, DieselError> + Send + 'static,
    {
        let inserted = row.clone();
        let stored = self.grouped(move |c| insert(c, &inserted)).await;
        self.stored_or_found(stored.map(|()| true), row, find).await
    }

    /// `row` when its insert stored it; the stored one that `find` reads
    /// when the insert skipped it, or a unique constraint says it existed
    /// already.
    async fn stored_or_found<T, F>(
        &self,
        inserted: Result<bool, StorageError>,
        row: T,
        find: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection) -> Result<Option<T>, DieselError> + Send + 'static,
    {
        match inserted {
            Ok(true) => Ok(row),
            Ok(false) => self
                .read(find)
                .await?
                .ok_or(StorageError::Query(DieselError::NotFound)),
            Err(StorageError::Query(e)) if is_unique_violation(&e) => self
                .read(find)
                .await?
                .ok_or(StorageError::Query(DieselError::NotFound)),
            Err(e) => Err(e),
        }
    }

    /// Applies the pending migrations of `schema` for this backend.
    pub async fn migrate(&self, schema: Schema) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get()
                .context("no database connection for migrations")?;
            fn owned<V: std::fmt::Display, E: std::fmt::Display>(
                applied: Result<Vec<V>, E>,
            ) -> anyhow::Result<Vec<String>> {
                applied
                    .map(|versions| versions.iter().map(ToString::to_string).collect())
                    .map_err(|e| anyhow::anyhow!("migration failed: {e}"))
            }
            let applied = match &mut conn.conn {
                DbConnection::Postgres(conn) => {
                    // Replicas starting together migrate one at a time; the
                    // others then find nothing pending.
                    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                        .context("waiting for the migration lock")?;
                    let applied = owned(conn.run_pending_migrations(Combined(schema.postgres)));
                    let _ =
                        conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
                    applied?
                }
                DbConnection::Sqlite(conn) => {
                    // A migration may index or rewrite a whole table: its
                    // sorts and statement journal spill to files, as they
                    // would not in memory (see `ConnectionFactory::open`).
                    conn.batch_execute("PRAGMA temp_store = FILE")
                        .context("preparing to migrate")?;
                    let applied = owned(conn.run_pending_migrations(Combined(schema.sqlite)));
                    conn.batch_execute("PRAGMA temp_store = MEMORY")
                        .context("after migrating")?;
                    applied?
                }
            };
            for version in applied {
                tracing::info!(%version, "migration applied");
            }
            Ok(())
        })
        .await
        .context("migration task failed")?
    }
}

/// A scratch PostgreSQL database of its own for a test, created empty on
/// the server `SSAK3_TEST_POSTGRES_URL` names (the local one by default).
#[cfg(test)]
pub(crate) fn scratch_postgres() -> anyhow::Result<DatabaseUrl> {
    let server = std::env::var("SSAK3_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s);
    let url = DatabaseUrl::parse(&format!(
        "{server}/ssak3_test_{}",
        uuid::Uuid::new_v4().simple()
    ))?;
    url.create_if_missing()?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database_error(kind: DatabaseErrorKind, message: &str) -> StorageError {
        StorageError::Query(DieselError::DatabaseError(
            kind,
            Box::new(message.to_owned()),
        ))
    }

    #[test]
    fn lost_connections_and_lost_races_are_transient_and_bugs_are_not() {
        for transient in [
            database_error(
                DatabaseErrorKind::ClosedConnection,
                "terminating connection",
            ),
            database_error(DatabaseErrorKind::UnableToSendCommand, "no connection"),
            database_error(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize",
            ),
            database_error(DatabaseErrorKind::Unknown, "database is locked"),
            database_error(DatabaseErrorKind::Unknown, "deadlock detected"),
        ] {
            assert!(transient.is_transient(), "{transient:?}");
        }
        for lasting in [
            database_error(DatabaseErrorKind::UniqueViolation, "duplicate key"),
            database_error(DatabaseErrorKind::Unknown, "syntax error"),
            StorageError::Query(DieselError::NotFound),
        ] {
            assert!(!lasting.is_transient(), "{lasting:?}");
        }
    }

    #[test]
    fn urls_parse_by_scheme() -> anyhow::Result<()> {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/x.db")?,
            DatabaseUrl::Sqlite("data/x.db".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgres://u@h/db")?,
            DatabaseUrl::Postgres(_)
        ));
        let error = DatabaseUrl::parse("mysql://root:pw@h/db")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("not supported"), "{error}");
        assert!(!error.contains("pw"), "password leaked: {error}");
        Ok(())
    }

    #[test]
    fn services_sharing_a_url_get_databases_of_their_own() {
        let pg = DatabaseUrl::Postgres("postgres://u@h:5432/ssak3?sslmode=disable".into());
        assert_eq!(
            pg.for_one_of_many("payment").to_url(),
            "postgres://u@h:5432/ssak3_payment?sslmode=disable"
        );
        let file = DatabaseUrl::Sqlite("data/all.db".into());
        assert_eq!(
            file.for_one_of_many("notify").to_url(),
            "sqlite://data/all_notify.db"
        );
    }

    #[test]
    fn redaction_hides_only_the_password() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[tokio::test]
    async fn insert_or_find_returns_the_stored_row_on_a_unique_violation() -> anyhow::Result<()> {
        use diesel::{RunQueryDsl, sql_query, sql_types::Text};
        #[derive(Clone, Debug, PartialEq, diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            key: String,
            #[diesel(sql_type = Text)]
            value: String,
        }
        fn insert(c: &mut DbConnection, row: &Row) -> Result<(), DieselError> {
            sql_query("INSERT INTO kv (key, value) VALUES (?, ?)")
                .bind::<Text, _>(&row.key)
                .bind::<Text, _>(&row.value)
                .execute(c)
                .map(drop)
        }
        fn find(c: &mut DbConnection) -> Result<Option<Row>, DieselError> {
            use diesel::OptionalExtension as _;
            sql_query("SELECT key, value FROM kv WHERE key = 'k'")
                .get_result(c)
                .optional()
        }
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 2)?;
        db.transaction(|c| {
            sql_query("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)").execute(c)
        })
        .await?;
        let first = Row {
            key: "k".into(),
            value: "first".into(),
        };
        let second = Row {
            key: "k".into(),
            value: "second".into(),
        };
        assert_eq!(db.insert_or_find(first.clone(), insert, find).await?, first);
        assert_eq!(db.insert_or_find(second, insert, find).await?, first);
        Ok(())
    }

    /// The server ends an idle connection (a restart, a failover, an
    /// operator): the next call gets a fresh connection instead of an error.
    #[tokio::test]
    async fn a_connection_the_server_dropped_while_idle_is_replaced_unnoticed() -> anyhow::Result<()>
    {
        use diesel::{Connection as _, RunQueryDsl, sql_query, sql_types::Integer};
        #[derive(diesel::QueryableByName)]
        struct Backend {
            #[diesel(sql_type = Integer)]
            pid: i32,
        }
        let admin_url = std::env::var("SSAK3_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let url = scratch_postgres()?;
        let db = Database::connect(&url, 1)?;
        let backend = || {
            db.read(|c| {
                sql_query("SELECT pg_backend_pid() AS pid")
                    .get_result::<Backend>(c)
                    .map(|b| b.pid)
            })
        };
        let first = backend().await?;
        tokio::time::sleep(TRUSTED_FOR + Duration::from_millis(200)).await;
        let mut admin = PgConnection::establish(&admin_url)?;
        sql_query(format!("SELECT pg_terminate_backend({first})")).execute(&mut admin)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = backend().await;
        drop(db);
        url.drop_if_exists()?;
        assert_ne!(first, second?, "the same server process answered");
        Ok(())
    }

    /// The one integer a query answers, read on a pooled connection of `db`.
    async fn integer(db: &Database, query: &'static str) -> anyhow::Result<i32> {
        use diesel::{RunQueryDsl, sql_query, sql_types::Integer};
        #[derive(diesel::QueryableByName)]
        struct Value {
            #[diesel(sql_type = Integer)]
            value: i32,
        }
        let row = db
            .read(move |c| sql_query(query).get_result::<Value>(c))
            .await?;
        Ok(row.value)
    }

    /// A connection's page cache is bounded: the default 2 MiB per pooled
    /// connection grew the one-process system by 64 MiB under load.
    #[tokio::test]
    async fn sqlite_connections_keep_a_small_page_cache() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 2)?;
        let size = integer(&db, "SELECT cache_size AS value FROM pragma_cache_size").await?;
        assert_eq!(size, -256, "KiB per connection");
        Ok(())
    }

    /// Statement journals and sorts stay in memory: as temporary files
    /// they cost a file created, written and unlinked each time.
    #[tokio::test]
    async fn sqlite_connections_keep_temporary_storage_in_memory() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 2)?;
        let store = integer(&db, "SELECT temp_store AS value FROM pragma_temp_store").await?;
        assert_eq!(store, 2, "2 is MEMORY, 0 the default (files)");
        Ok(())
    }

    /// Migrations may sort or rewrite a whole table: they spill to files,
    /// and the connection keeps its temporary storage in memory after.
    #[tokio::test]
    async fn sqlite_migrations_keep_temporary_storage_on_files() -> anyhow::Result<()> {
        const RECORD: EmbeddedMigrations =
            diesel_migrations::embed_migrations!("src/db/testdata/temp_store");
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 1)?;
        db.migrate(Schema {
            postgres: &[],
            sqlite: &[RECORD],
        })
        .await?;
        let during = integer(&db, "SELECT temp_store AS value FROM migrated_with").await?;
        assert_eq!(during, 1, "1 is FILE");
        let after = integer(&db, "SELECT temp_store AS value FROM pragma_temp_store").await?;
        assert_eq!(after, 2, "the pooled connection is back in memory");
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_transactions_roll_back_on_error() -> anyhow::Result<()> {
        use diesel::{RunQueryDsl, sql_query};
        let dir = tempfile::tempdir()?;
        let db = Database::connect(&DatabaseUrl::Sqlite(dir.path().join("t.db")), 4)?;
        db.transaction(|c| sql_query("CREATE TABLE t (x INTEGER UNIQUE)").execute(c))
            .await?;
        let failed = db
            .transaction(|c| {
                sql_query("INSERT INTO t VALUES (1)").execute(c)?;
                sql_query("INSERT INTO t VALUES (1)").execute(c)
            })
            .await;
        assert!(matches!(failed, Err(StorageError::Query(ref e)) if is_unique_violation(e)));
        let count = db
            .read(|c| {
                #[derive(diesel::QueryableByName)]
                struct Count {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                sql_query("SELECT COUNT(*) AS n FROM t").get_result::<Count>(c)
            })
            .await?;
        assert_eq!(count.n, 0);
        Ok(())
    }
}
