//! The database: PostgreSQL when `DATABASE_URL` points at one, an SQLite file otherwise.
//!
//! Two pools behind an enum rather than `sqlx::Any`: each query is written once and runs on
//! either (the SQL is portable except the batch read), and the PostgreSQL batch read can bind
//! an array. Every query bumps `service_db_queries_total`, so `/metrics` shows what the cache
//! saved.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::strategies::Item;

/// The schema, embedded in the binary so a fresh machine needs nothing but the executable.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "items", include_str!("../migrations/0001_items.sql"))];

/// A database failure, sorted by what the caller should answer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (down, refusing, pool exhausted): a 503.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else (a bug, a constraint): a 500.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => DbError::Unavailable(e),
            // Connection refused at start-up, "database is not accepting connections",
            // "terminating connection due to administrator command", shutdown in progress.
            sqlx::Error::Database(d)
                if d.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("57") || c == "55000"
                }) =>
            {
                DbError::Unavailable(e)
            }
            // SQLite: SQLITE_BUSY or SQLITE_LOCKED (extended codes keep the primary code in
            // the low byte): another connection held the lock past the busy timeout.
            sqlx::Error::Database(d)
                if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && d.code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6)) =>
            {
                DbError::Unavailable(e)
            }
            _ => DbError::Other(e),
        }
    }
}

/// Runs `$body` with `$pool` bound to whichever pool this is; the body is compiled once per
/// backend, so portable queries are written once.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Postgres($pool) => $body,
            Db::Sqlite($pool) => $body,
        }
    };
}

/// Counts one query, labelled by what it does (a bounded set).
fn count(query: &'static str) {
    metrics::counter!("service_db_queries_total", "query" => query).increment(1);
}

/// A connection pool to PostgreSQL or SQLite.
#[derive(Debug, Clone)]
pub enum Db {
    /// `postgres://` URLs.
    Postgres(PgPool),
    /// Everything else: an embedded SQLite file, created when missing.
    Sqlite(SqlitePool),
}

/// Pool settings from the environment.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Connections per service process.
    pub max_connections: u32,
    /// How long a request waits for a connection before answering 503.
    pub acquire_timeout: Duration,
}

impl Db {
    /// Opens a pool; does not wait for the database to answer (like the cache, the service
    /// starts while its database is still coming up).
    ///
    /// # Errors
    ///
    /// An URL that does not parse.
    pub fn connect_lazy(url: &str, options: &DbOptions) -> Result<Db, sqlx::Error> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                // No ping before each query (sqlx's default): it doubles the round trips of
                // every uncached read. A connection the server dropped fails one query with
                // a 503 and is closed, and the pool opens a new one.
                .test_before_acquire(false)
                .connect_lazy(url)?;
            Ok(Db::Postgres(pool))
        } else {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL lets readers run while one connection writes.
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_lazy_with(connect);
            Ok(Db::Sqlite(pool))
        }
    }

    /// `"postgres"` or `"sqlite"`, for logs and `/health`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(_) => "sqlite",
        }
    }

    /// Runs the migrations that have not run yet, then inserts items `1..=seed_items` that
    /// are missing (named `item <id>`), so a fresh database has something to serve.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn migrate_and_seed(&self, seed_items: u64) -> Result<(), DbError> {
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|&(version, description, sql)| {
                        Migration::new(
                            version,
                            Cow::Borrowed(description),
                            MigrationType::Simple,
                            Cow::Borrowed(sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        let migrated = on_pool!(self, pool => migrator.run(pool).await);
        migrated.map_err(|e| DbError::from(sqlx::Error::Migrate(Box::new(e))))?;
        let seed = i64::try_from(seed_items).unwrap_or(i64::MAX);
        // One statement for any count; `WHERE true` is SQLite's way to allow ON CONFLICT
        // after INSERT .. SELECT.
        let sql =
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
                   INSERT INTO items (id, name) SELECT n, 'item ' || n FROM seq WHERE $1 > 0 \
                   ON CONFLICT (id) DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql).bind(seed).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// One item, `None` when there is no such row.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn item(&self, id: u64) -> Result<Option<Item>, DbError> {
        count("item");
        let sql = "SELECT id, name FROM items WHERE id = $1";
        let row = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).fetch_optional(pool).await?
            .map(|r| item_from(r.try_get("id"), r.try_get("name"))));
        row.transpose()
    }

    /// The items of `ids` that exist, in one query, in no particular order.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn items(&self, ids: &[u64]) -> Result<Vec<Item>, DbError> {
        count("items_batch");
        let ids: Vec<i64> = ids.iter().map(|&id| db_id(id)).collect();
        let rows: Vec<Result<Item, DbError>> = match self {
            Db::Postgres(pool) => sqlx::query("SELECT id, name FROM items WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| item_from(r.try_get("id"), r.try_get("name")))
                .collect(),
            Db::Sqlite(pool) => {
                // SQLite binds no arrays: the ids go in as one JSON array, so the statement
                // text (and its cached plan) is the same for any number of ids.
                let json = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
                sqlx::query(
                    "SELECT id, name FROM items WHERE id IN (SELECT value FROM json_each($1))",
                )
                .bind(json)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| item_from(r.try_get("id"), r.try_get("name")))
                .collect()
            }
        };
        rows.into_iter().collect()
    }

    /// Creates or renames an item.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn put_item(&self, id: u64, name: &str) -> Result<Item, DbError> {
        count("put_item");
        let sql = "INSERT INTO items (id, name) VALUES ($1, $2) \
                   ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id, name";
        let row = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).bind(name).fetch_one(pool).await
            .map(|r| item_from(r.try_get("id"), r.try_get("name"))))?;
        row
    }

    /// Deletes an item (with its members and tags); whether it existed.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn delete_item(&self, id: u64) -> Result<bool, DbError> {
        count("delete_item");
        let sql = "DELETE FROM items WHERE id = $1";
        let done = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).execute(pool).await?.rows_affected());
        Ok(done > 0)
    }

    /// An item's view count, `None` when there is no such item.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn views(&self, id: u64) -> Result<Option<i64>, DbError> {
        count("views");
        let sql = "SELECT views FROM items WHERE id = $1";
        let views = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).fetch_optional(pool).await?
            .map(|r| r.try_get::<i64, _>("views")));
        Ok(views.transpose()?)
    }

    /// Adds one view; the new count, `None` when there is no such item.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn add_view(&self, id: u64) -> Result<Option<i64>, DbError> {
        count("add_view");
        let sql = "UPDATE items SET views = views + 1 WHERE id = $1 RETURNING views";
        let views = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).fetch_optional(pool).await?
            .map(|r| r.try_get::<i64, _>("views")));
        Ok(views.transpose()?)
    }

    /// The member ids of an item's list, in the order they were added.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn members(&self, id: u64) -> Result<Vec<u64>, DbError> {
        count("members");
        let sql = "SELECT member_id FROM item_members WHERE item_id = $1 ORDER BY position";
        let rows = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).fetch_all(pool).await?
            .into_iter().map(|r| r.try_get::<i64, _>("member_id")).collect::<Result<Vec<_>, _>>())?;
        Ok(rows.into_iter().map(api_id).collect())
    }

    /// Appends `member` to an item's list.
    ///
    /// # Errors
    ///
    /// The database's (a foreign-key violation when the item does not exist).
    pub async fn add_member(&self, id: u64, member: u64) -> Result<(), DbError> {
        count("add_member");
        let sql = "INSERT INTO item_members (item_id, position, member_id) \
                   SELECT $1, COALESCE(MAX(position), 0) + 1, $2 FROM item_members WHERE item_id = $1";
        on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).bind(db_id(member)).execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// An item's tags.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn tags(&self, id: u64) -> Result<Vec<String>, DbError> {
        count("tags");
        let sql = "SELECT tag FROM item_tags WHERE item_id = $1 ORDER BY tag";
        let rows = on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).fetch_all(pool).await?
            .into_iter().map(|r| r.try_get::<String, _>("tag")).collect::<Result<Vec<_>, _>>())?;
        Ok(rows)
    }

    /// Adds a tag to an item (nothing when it has it already).
    ///
    /// # Errors
    ///
    /// The database's (a foreign-key violation when the item does not exist).
    pub async fn add_tag(&self, id: u64, tag: &str) -> Result<(), DbError> {
        count("add_tag");
        let sql = "INSERT INTO item_tags (item_id, tag) VALUES ($1, $2) ON CONFLICT DO NOTHING";
        on_pool!(self, pool => sqlx::query(sql).bind(db_id(id)).bind(tag).execute(pool).await.map(|_| ()))?;
        Ok(())
    }
}

/// Ids are `u64` in the API and `BIGINT` in the database; the API layer accepts only ids up
/// to `i64::MAX` (see `routes::parse_id`), so this never saturates on what it is given.
fn db_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Rows hold only ids the API wrote, all positive; a negative one (written by hand) maps to 0,
/// which no route accepts, rather than panicking.
fn api_id(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}

fn item_from(
    id: Result<i64, sqlx::Error>,
    name: Result<String, sqlx::Error>,
) -> Result<Item, DbError> {
    Ok(Item {
        id: api_id(id?),
        name: name?,
    })
}

/// Whether `e` says a referenced row is missing (foreign key violation on either database).
#[must_use]
pub fn is_missing_parent(e: &DbError) -> bool {
    match e {
        DbError::Other(sqlx::Error::Database(d)) => {
            d.kind() == sqlx::error::ErrorKind::ForeignKeyViolation
        }
        _ => false,
    }
}
