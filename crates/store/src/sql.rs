//! Running SQL on whichever backend the store was opened on.
//!
//! Every statement is written once, with PostgreSQL's numbered placeholders
//! (`$1`, `$2`, …), and its arguments are kept as a list of [`Value`]s until
//! it runs. SQLite understands `$N` as it is; PostgreSQL needs it; MySQL only
//! knows positional `?`, so [`to_positional`] rewrites the text and lists which
//! value each `?` takes, which also makes a `$N` used twice work there.
//!
//! Statements run in autocommit mode, one at a time: none holds a lock past
//! its own end, which is what Galera clusters need. The exceptions:
//! [`Store::execute_claimed_last`] writes a forward together with the rows
//! of the ports it occupies and, last, its claim on the project's quota
//! counter (a few writes with no reads in between; `quotas.rs`), and
//! `Store::insert_session` reads a few session ids per cap and deletes the
//! oldest before its insert. Changes of an existing forward (update,
//! move, delete, mark) lock its row first, read it, change it and update the
//! summary of its proxy's bucket (`digests.rs`) in one transaction, so that
//! the summary moves by exactly what the row did. A statement the database
//! aborted because of a deadlock or a serialization conflict (on Galera, a
//! certification failure reports the same SQLSTATE) is run again, a few times,
//! since such an abort undid it completely.

use std::time::Duration;

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::{Arguments, AssertSqlSafe};

use crate::{Backend, Store, StoreError};

/// How often a statement aborted by a deadlock or serialization failure is
/// tried in all. Creates of one project meet on its quota counter row, and
/// InnoDB breaks some of those meetings as deadlocks (1213): with 20 creates
/// racing on two servers, five attempts of a few milliseconds each were
/// not always enough (a 503 seen in CI); ten, with pauses growing to 160 ms
/// (about 1.2 s in all at worst), are.
pub(crate) const CONFLICT_ATTEMPTS: u32 = 10;

/// Which statement of a transaction, if any, decides whether it commits:
/// when that one changes no row, the transaction is rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    None,
    Last,
}

/// Runs `$work` (a block that begins and commits its own transaction and
/// ends in a `Result<$t, StoreError>`) again when the database aborted it
/// for a deadlock or a serialization conflict, as
/// [`Store::execute_in_transaction`] does: such an abort undid it
/// completely. A macro, not a function taking a closure, so that the futures
/// of the methods using it stay `Send`.
macro_rules! retrying {
    ($t:ty, $work:block) => {{
        let mut attempt = 1;
        loop {
            let result: Result<$t, $crate::StoreError> = async { $work }.await;
            match result {
                Err($crate::StoreError::Database(e))
                    if $crate::sql::is_conflict(&e) && attempt < $crate::sql::CONFLICT_ATTEMPTS =>
                {
                    tracing::debug!(attempt, error = %e, "transaction aborted by a conflict; retrying");
                    $crate::sql::backoff(attempt).await;
                    attempt += 1;
                }
                done => break done,
            }
        }
    }};
}
pub(crate) use retrying;

/// A transaction of the store's pool, holding the store's writer lock on
/// SQLite (see `Store::writer`).
pub(crate) struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Any>,
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

/// A value bound to a statement.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Text(String),
    /// A text that may be NULL.
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl From<Option<String>> for Value {
    fn from(s: Option<String>) -> Value {
        Value::OptText(s)
    }
}

impl From<Option<&str>> for Value {
    fn from(s: Option<&str>) -> Value {
        Value::OptText(s.map(str::to_owned))
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<u16> for Value {
    fn from(i: u16) -> Value {
        Value::Int(i64::from(i))
    }
}

impl From<Option<u16>> for Value {
    fn from(i: Option<u16>) -> Value {
        Value::OptInt(i.map(i64::from))
    }
}

impl From<Option<u32>> for Value {
    fn from(i: Option<u32>) -> Value {
        Value::OptInt(i.map(i64::from))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

/// Rewrites `$N` placeholders to `?` and returns, for each `?` in order, the
/// zero-based index of the value it takes. Quoted strings and identifiers are
/// copied untouched.
pub(crate) fn to_positional(sql: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => {
                quote = Some(c);
                out.push(c);
            }
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut number = 0usize;
                while let Some(digit) = chars.peek().and_then(|d| d.to_digit(10)) {
                    number = number * 10 + digit as usize;
                    chars.next();
                }
                out.push('?');
                // `$0` does not exist; map it to an index that fails to bind.
                order.push(number.wrapping_sub(1));
            }
            _ => out.push(c),
        }
    }
    (out, order)
}

/// Whether `e` is a violation of a unique constraint, on any backend.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// Whether the database aborted the statement to break a deadlock or a
/// serialization conflict, so that running it again is safe and may succeed.
/// SQLSTATE 40001 is a serialization failure on PostgreSQL and a deadlock
/// (1213, also Galera's certification failure) on MySQL/MariaDB; 40P01 is
/// PostgreSQL's deadlock.
pub(crate) fn is_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}

impl Store {
    /// The statement text for this backend and its arguments in bind order.
    pub(crate) fn prepare(
        &self,
        sql: &str,
        values: &[Value],
    ) -> Result<(String, AnyArguments), sqlx::Error> {
        let (text, order) = match self.backend {
            Backend::MySql => to_positional(sql),
            Backend::Sqlite | Backend::Postgres => (sql.to_owned(), (0..values.len()).collect()),
        };
        let mut args = AnyArguments::default();
        for index in order {
            let value = values.get(index).ok_or_else(|| {
                sqlx::Error::Protocol(format!("statement has no value for placeholder {index}"))
            })?;
            let added = match value {
                Value::Text(text) => args.add(text.clone()),
                Value::OptText(text) => args.add(text.clone()),
                Value::Int(int) => args.add(*int),
                Value::OptInt(int) => args.add(*int),
                Value::Bool(b) => args.add(*b),
            };
            added.map_err(sqlx::Error::Encode)?;
        }
        Ok((text, args))
    }

    /// Runs a statement that returns no rows.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        values: &[Value],
    ) -> Result<AnyQueryResult, sqlx::Error> {
        let mut attempt = 1;
        loop {
            let (text, args) = self.prepare(sql, values)?;
            let _writer = self.write_turn().await;
            match sqlx::query_with(AssertSqlSafe(text), args)
                .execute(&self.pool)
                .await
            {
                Err(e) if is_conflict(&e) && attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "statement aborted by a conflict; retrying");
                    backoff(attempt).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Runs `statements` in one transaction and returns the rows each
    /// affected. A conflict abort retries the whole transaction.
    pub(crate) async fn execute_in_transaction(
        &self,
        statements: &[(String, Vec<Value>)],
    ) -> Result<Vec<u64>, sqlx::Error> {
        self.transaction(statements, Claim::None).await
    }

    /// Like [`Store::execute_in_transaction`], but the last statement is a
    /// claim: when it changes no row, the whole transaction is rolled back (and
    /// the result ends in 0). A claim that locks a hot row (a project's
    /// quota counter) then holds that lock only until the commit, not
    /// across the other statements.
    pub(crate) async fn execute_claimed_last(
        &self,
        statements: &[(String, Vec<Value>)],
    ) -> Result<Vec<u64>, sqlx::Error> {
        self.transaction(statements, Claim::Last).await
    }

    async fn transaction(
        &self,
        statements: &[(String, Vec<Value>)],
        claim: Claim,
    ) -> Result<Vec<u64>, sqlx::Error> {
        let mut attempt = 1;
        loop {
            let result = async {
                let _writer = self.write_turn().await;
                let mut tx = self.pool.begin().await?;
                let mut affected = Vec::with_capacity(statements.len());
                for (sql, values) in statements {
                    let (text, args) = self.prepare(sql, values)?;
                    let done = sqlx::query_with(AssertSqlSafe(text), args)
                        .execute(&mut *tx)
                        .await?;
                    affected.push(done.rows_affected());
                }
                if claim == Claim::Last && affected.last() == Some(&0) {
                    tx.rollback().await?;
                    return Ok(affected);
                }
                tx.commit().await?;
                Ok(affected)
            }
            .await;
            match result {
                Err(e) if is_conflict(&e) && attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "transaction aborted by a conflict; retrying");
                    backoff(attempt).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Runs a statement in transaction `tx`; the rows it changed.
    pub(crate) async fn tx_execute(
        &self,
        tx: &mut Tx,
        sql: &str,
        values: &[Value],
    ) -> Result<u64, StoreError> {
        let (text, args) = self.prepare(sql, values)?;
        let done = sqlx::query_with(AssertSqlSafe(text), args)
            .execute(&mut *tx.inner)
            .await?;
        Ok(done.rows_affected())
    }

    /// Runs a query in transaction `tx` and returns all its rows.
    pub(crate) async fn tx_fetch_all(
        &self,
        tx: &mut Tx,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<AnyRow>, StoreError> {
        let (text, args) = self.prepare(sql, values)?;
        Ok(sqlx::query_with(AssertSqlSafe(text), args)
            .fetch_all(&mut *tx.inner)
            .await?)
    }

    /// Begins a transaction (a writing one: on SQLite it waits for the
    /// writer lock first).
    pub(crate) async fn begin(&self) -> Result<Tx, StoreError> {
        let writer = self.write_turn().await;
        Ok(Tx {
            inner: self.pool.begin().await?,
            _writer: writer,
        })
    }

    /// On SQLite, this process's turn to write (see `Store::writer`).
    pub(crate) async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.writer {
            Some(writer) => Some(writer.clone().lock_owned().await),
            None => None,
        }
    }

    /// Runs a query and returns all its rows.
    pub(crate) async fn fetch_all(
        &self,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<AnyRow>, StoreError> {
        let mut attempt = 1;
        loop {
            let (text, args) = self.prepare(sql, values)?;
            match sqlx::query_with(AssertSqlSafe(text), args)
                .fetch_all(&self.pool)
                .await
            {
                Err(e) if is_conflict(&e) && attempt < CONFLICT_ATTEMPTS => {
                    backoff(attempt).await;
                    attempt += 1;
                }
                done => return Ok(done?),
            }
        }
    }

    /// Runs a query and returns its first row, if any.
    pub(crate) async fn fetch_optional(
        &self,
        sql: &str,
        values: &[Value],
    ) -> Result<Option<AnyRow>, StoreError> {
        Ok(self.fetch_all(sql, values).await?.into_iter().next())
    }
}

/// A short pause before retrying, growing with the attempt and jittered, so
/// that the statements that collided do not collide again in lockstep.
pub(crate) async fn backoff(attempt: u32) {
    // 5, 10, 20, … 160 ms, plus up to as much again at random.
    let base = 5u64 << attempt.saturating_sub(1).min(5);
    let jitter = u64::try_from(uuid::Uuid::new_v4().as_u128() % u128::from(base)).unwrap_or(0);
    let millis = base + jitter;
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_numbered_placeholders() {
        let (sql, order) =
            to_positional("SELECT $2, $1 FROM t WHERE a = $1 AND b = '$3' AND c = $10");
        assert_eq!(sql, "SELECT ?, ? FROM t WHERE a = ? AND b = '$3' AND c = ?");
        assert_eq!(order, vec![1, 0, 0, 9]);
    }

    #[test]
    fn leaves_dollars_without_digits_alone() {
        let (sql, order) = to_positional("SELECT '$' || $1, \"$2\"");
        assert_eq!(sql, "SELECT '$' || ?, \"$2\"");
        assert_eq!(order, vec![0]);
    }
}
