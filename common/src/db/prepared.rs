//! Statements of fixed text that the connection keeps prepared.
//!
//! diesel prepares a statement once per connection and then only executes
//! it, but only when it can prove the statement's text never depends on its
//! values: it refuses for every `UPDATE` (a changeset may skip `None`
//! fields), every upsert and every `sql_query`. The database parses and
//! plans each of those anew, every time: a third of PostgreSQL's work on the
//! booking path.
//!
//! A [`prepared`] statement is written as text with `$1`, `$2`, … for its
//! binds, like `sql_query`, and is kept under that text: give it text that
//! is one of a few (no `IN` lists of varying length, no values formatted
//! into it). Every `$` in the text is a placeholder (so no `$` in literals,
//! identifiers or dollar quoting), and every bind must be used. On SQLite
//! the placeholders become `?` (a bind used twice is sent twice).

use std::borrow::Cow;

use diesel::{
    QueryResult, RunQueryDsl,
    backend::Backend,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
    serialize::ToSql,
    sql_types::{HasSqlType, Untyped},
};

use super::DbConnection;

/// The backend of [`DbConnection`].
type Db = <DbConnection as diesel::Connection>::Backend;

/// A statement of text `sql` with `$n` placeholders, kept prepared.
pub fn prepared<'a>(sql: impl Into<Cow<'static, str>>) -> Prepared<'a> {
    Prepared {
        sql: sql.into(),
        binds: Vec::new(),
        keep: true,
    }
}

/// A statement of `count` rows (a multi-row insert, say; its text made
/// with [`rows`]): kept prepared when it has one, a text that recurs;
/// parsed anew at each call otherwise, so that batches of every size do not
/// each leave a statement behind on every connection.
pub fn multi_row<'a>(sql: String, count: usize) -> Prepared<'a> {
    Prepared {
        keep: count == 1,
        ..prepared(sql)
    }
}

/// Runs `statement`, which returns the ids of the rows it wrote `AS id`
/// (an insert that skips conflicts, a compare-and-set): for each of `ids`,
/// whether it was written.
pub fn returned<'a>(
    conn: &mut DbConnection,
    statement: Prepared<'_>,
    ids: impl IntoIterator<Item = &'a str>,
) -> QueryResult<Vec<bool>> {
    #[derive(diesel::QueryableByName)]
    struct Written {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
    }
    let written: std::collections::HashSet<String> = statement
        .load::<Written>(conn)?
        .into_iter()
        .map(|w| w.id)
        .collect();
    Ok(ids.into_iter().map(|id| written.contains(id)).collect())
}

/// `count` rows of `columns` placeholders each, numbered from `$first`:
/// `rows(2, 3, 1)` is `($1, $2, $3), ($4, $5, $6)`.
pub fn rows(count: usize, columns: usize, first: usize) -> String {
    let row = |r: usize| {
        let at = first + r * columns;
        let binds: Vec<String> = (at..at + columns).map(|n| format!("${n}")).collect();
        format!("({})", binds.join(", "))
    };
    (0..count).map(row).collect::<Vec<_>>().join(", ")
}

/// A statement the connection keeps prepared; made by [`prepared`].
#[must_use = "a statement runs only when executed or loaded"]
pub struct Prepared<'a> {
    sql: Cow<'static, str>,
    binds: Vec<Box<dyn QueryFragment<Db> + Send + 'a>>,
    /// Whether the connection keeps it prepared.
    keep: bool,
}

impl<'a> Prepared<'a> {
    /// Binds `$n` (n = the binds so far + 1) to `value` as SQL type `ST`.
    pub fn bind<ST, T>(mut self, value: T) -> Self
    where
        ST: 'static,
        T: ToSql<ST, Db> + Send + 'a,
        Db: HasSqlType<ST>,
    {
        self.binds.push(Box::new(Bind::<ST, T> {
            value,
            sql_type: std::marker::PhantomData,
        }));
        self
    }
}

impl std::fmt::Debug for Prepared<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("sql", &self.sql)
            .field("binds", &self.binds.len())
            .finish()
    }
}

/// One bind value; its placeholder is written where the text has it.
struct Bind<ST, T> {
    value: T,
    sql_type: std::marker::PhantomData<fn() -> ST>,
}

impl<ST, T, DB> QueryFragment<DB> for Bind<ST, T>
where
    DB: Backend + HasSqlType<ST>,
    T: ToSql<ST, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_bind_param::<ST, T>(&self.value)
    }
}

impl QueryFragment<Db> for Prepared<'_> {
    /// The text, each `$n` replaced by bind n's placeholder. Marked unsafe
    /// to keep only when made so by [`multi_row`].
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Db>) -> QueryResult<()> {
        if !self.keep {
            out.unsafe_to_cache_prepared();
        }
        let wrong = |what: String| {
            diesel::result::Error::QueryBuilderError(format!("{what} in: {}", self.sql).into())
        };
        let mut used = vec![false; self.binds.len()];
        let mut rest: &str = &self.sql;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - at - 1);
            let text = &rest[at + 1..at + 1 + digits];
            let index = text
                .parse::<usize>()
                .ok()
                .and_then(|number| number.checked_sub(1))
                .filter(|&index| index < self.binds.len())
                .ok_or_else(|| wrong(format!("`${text}` is not one of the binds")))?;
            used[index] = true;
            self.binds[index].walk_ast(out.reborrow())?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        match used.iter().position(|used| !used) {
            Some(index) => Err(wrong(format!("bind ${} is not used", index + 1))),
            None => Ok(()),
        }
    }
}

/// Kept under its text (and bind types), not its type.
impl QueryId for Prepared<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Prepared<'_> {}

#[cfg(test)]
mod tests {
    use diesel::{RunQueryDsl as _, sql_query, sql_types::Text};

    use super::*;
    use crate::db::{Database, DbConnection};

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// Statements this connection keeps prepared whose text holds `text`.
    fn kept(c: &mut DbConnection, text: &str) -> QueryResult<i64> {
        sql_query("SELECT COUNT(*) AS n FROM pg_prepared_statements WHERE statement LIKE $1")
            .bind::<Text, _>(format!("%{text}%"))
            .get_result::<Count>(c)
            .map(|count| count.n)
    }

    #[derive(diesel::QueryableByName)]
    struct Joined {
        #[diesel(sql_type = Text)]
        s: String,
    }

    #[test]
    fn each_placeholder_takes_its_bind_and_a_wrong_one_is_refused() -> QueryResult<()> {
        use diesel::Connection as _;
        let mut c = DbConnection::Sqlite(
            diesel::SqliteConnection::establish(":memory:")
                .map_err(|e| diesel::result::Error::QueryBuilderError(e.to_string().into()))?,
        );
        let two = |sql: &'static str| prepared(sql).bind::<Text, _>("a").bind::<Text, _>("b");
        // A bind used twice is sent twice; $10 is not $1 followed by 0.
        let joined = two("SELECT $1 || $2 || $1 AS s").get_result::<Joined>(&mut c)?;
        assert_eq!(joined.s, "aba");
        let mut ten =
            prepared("SELECT $10 || $1 || $2 || $3 || $4 || $5 || $6 || $7 || $8 || $9 AS s");
        for n in 1..=10 {
            ten = ten.bind::<Text, _>(n.to_string());
        }
        assert_eq!(ten.get_result::<Joined>(&mut c)?.s, "10123456789");
        for wrong in [
            "SELECT $1, $3",
            "SELECT $0, $2",
            "SELECT $1",
            "SELECT '$', $1, $2",
        ] {
            assert!(two(wrong).execute(&mut c).is_err(), "{wrong} was accepted");
        }
        Ok(())
    }

    /// A marked statement is parsed once per connection, then only
    /// executed; the same statement unmarked is parsed at every run.
    #[tokio::test]
    async fn a_marked_statement_is_prepared_once_and_an_unmarked_one_never() -> anyhow::Result<()> {
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, 1)?;
        let counts = db
            .read(|c| {
                for i in 0..3 {
                    prepared("SELECT 'marked', $1")
                        .bind::<Text, _>(i.to_string())
                        .execute(c)?;
                    sql_query("SELECT 'unmarked', $1")
                        .bind::<Text, _>(i.to_string())
                        .execute(c)?;
                }
                Ok((kept(c, "'marked'")?, kept(c, "'unmarked'")?))
            })
            .await;
        drop(db);
        url.drop_if_exists()?;
        assert_eq!(counts?, (1, 0));
        Ok(())
    }

    /// The statements an event applied alone runs are kept: the inbox's
    /// insert, the watch clock's lock and move on, the change signal; those
    /// of a batch of several, one row per item, are parsed at each run and
    /// leave nothing behind.
    #[tokio::test]
    async fn the_statements_of_each_event_stay_prepared() -> anyhow::Result<()> {
        use diesel::connection::SimpleConnection as _;

        use crate::{changes::Changes, events::inbox, watch};
        let url = crate::db::scratch_postgres()?;
        let db = Database::connect(&url, 1)?;
        db.migrate(crate::db::Schema {
            postgres: &[inbox::POSTGRES_MIGRATIONS],
            sqlite: &[inbox::SQLITE_MIGRATIONS],
        })
        .await?;
        let changes = Changes::start(&url, "prepared_test");
        let counts = db
            .read(move |c| {
                c.batch_execute(
                    "CREATE TABLE change_clock (owner TEXT PRIMARY KEY, position TIMESTAMP NOT NULL)",
                )?;
                for i in 0..3 {
                    let event = ssak3_proto::events::v1::Event {
                        event_id: format!("e-{i}"),
                        event_type: "payment.approved".into(),
                        ..Default::default()
                    };
                    inbox::record(c, &event)?;
                    let position = watch::next_position(c, &["customer:c-1"])?;
                    changes.mark_latest(c, [("customer:c-1", position)])?;
                    // A batch of two and one of three: parsed, not kept.
                    let batch: Vec<_> = (0..i + 2)
                        .map(|n| ssak3_proto::events::v1::Event {
                            event_id: format!("e-{i}-{n}"),
                            ..event.clone()
                        })
                        .collect();
                    inbox::record_all(c, &batch)?;
                    let owners = ["customer:c-1", "cleaner:k-1"];
                    let position = watch::next_positions(c, &[owners])?[0];
                    changes.mark_latest(c, owners.map(|owner| (owner, position)))?;
                }
                Ok([
                    kept(c, "INSERT INTO inbox")?,
                    kept(c, "INSERT INTO change_clock")?,
                    kept(c, "pg_notify")?,
                ])
            })
            .await;
        drop(db);
        url.drop_if_exists()?;
        // The clock's lock and its move on: two texts.
        assert_eq!(counts?, [1, 2, 1]);
        Ok(())
    }
}
