//! Durable state in one SQLite file, and the only crate that speaks SQL.
//!
//! - **Tasks**: one row per agent task (goal, tenant, status, answer, settings as JSON).
//! - **Journal**: the task's step records in order, each a kind and a JSON payload, appended
//!   *before* the agent acts on them, so that after a crash the task resumes from its journal
//!   without repeating completed model or tool calls. Appends commit in WAL mode with
//!   `synchronous=NORMAL`, which survives a process crash (`kill -9`); an OS crash may lose the
//!   last commits but never corrupts the file.
//! - **Memory**: facts and task outcomes per tenant, searched with FTS5 and BM25 ranking, listed
//!   newest first, forgotten by id (only within the tenant).
//! - **API keys** ([`keys`]): who may call the server — only a SHA-256 hash of each secret is
//!   kept, compared in constant time.
//! - **Audit log** ([`audit`]): who did what, when, and how it ended.
//!
//! The schema carries a version (`PRAGMA user_version`); opening an older database upgrades it
//! in place, one migration step at a time inside one transaction, and a newer one is refused.
//!
//! The agent decides what records mean; this crate stores and returns them faithfully.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

pub mod audit;
pub mod keys;

pub use audit::{AuditEntry, AuditFilter, AuditRow};
pub use keys::{KeyLimits, KeyRow, NewKey};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no task {0}")]
    NoTask(String),
    #[error(
        "the database was written by a newer version (schema {found}, this build knows {known})"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("no API key {0}")]
    NoKey(String),
    #[error("invalid API key settings: {0}")]
    InvalidKey(String),
    #[error("the system's random source failed: {0}")]
    Random(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[v]` takes a database at schema version `v` to `v + 1`; a new file starts at 0.
/// Steps are only ever appended: a released step never changes, so every database, however
/// old, reaches the current schema by the same path.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// Version 1: tasks, journal, memory.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    goal        TEXT NOT NULL,
    status      TEXT NOT NULL,
    answer      TEXT,
    settings    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks(tenant, created_ms);
CREATE TABLE IF NOT EXISTS journal (
    task_id     TEXT NOT NULL REFERENCES tasks(id),
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (task_id, seq)
);
CREATE TABLE IF NOT EXISTS memories (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    text        TEXT NOT NULL,
    task_id     TEXT,
    created_ms  INTEGER NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
    text, content='memories', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
";

/// Version 2: API keys (a hash of the secret, never the secret) and the audit log.
const SCHEMA_V2: &str = "
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    last_used_ms INTEGER,
    revoked_ms  INTEGER,
    rpm         INTEGER,
    max_tasks   INTEGER
);
CREATE INDEX api_keys_by_tenant ON api_keys(tenant, created_ms);
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    tenant      TEXT,
    key_id      TEXT,
    action      TEXT NOT NULL,
    target      TEXT,
    status      INTEGER,
    outcome     TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit(at_ms);
CREATE INDEX audit_by_tenant ON audit(tenant, at_ms);
";

/// Words that match nearly every memory: searching by them recalls noise (and small models
/// follow whatever they are shown).
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "answer", "are", "as", "at", "be", "by", "can", "could", "do", "does", "for",
    "from", "give", "goal", "how", "i", "if", "in", "is", "it", "me", "my", "of", "on", "or",
    "please", "should", "tell", "that", "the", "then", "this", "to", "use", "using", "was", "we",
    "what", "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub tenant: String,
    pub goal: String,
    /// The agent's words: "running", "succeeded", "failed", ...
    pub status: String,
    pub answer: Option<String>,
    pub settings: Value,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: i64,
    pub kind: String,
    pub payload: Value,
    pub at_ms: i64,
}

/// A remembered fact with its search rank (lower BM25 is better; SQLite's convention).
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    pub id: i64,
    pub kind: String,
    pub text: String,
    pub task_id: Option<String>,
    pub created_ms: i64,
    /// BM25 of a search hit; 0 for memories not found by searching.
    pub rank: f64,
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating) the database file; its folder must exist.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Store::init(conn)
    }

    /// A private database in memory (tests, throwaway runs).
    pub fn in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        // Several processes (a server and a CLI) may share the file: wait for locks a while.
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves SQLite consistent (transactions).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new task, status "running".
    pub fn create_task(&self, id: &str, tenant: &str, goal: &str, settings: &Value) -> Result<()> {
        self.insert_task(id, tenant, goal, "running", settings)
    }

    /// A new task with the given status ("queued" for one a worker will pick up).
    pub fn insert_task(
        &self,
        id: &str,
        tenant: &str,
        goal: &str,
        status: &str,
        settings: &Value,
    ) -> Result<()> {
        let now = now_ms();
        self.db().execute(
            "INSERT INTO tasks (id, tenant, goal, status, settings, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![id, tenant, goal, status, settings.to_string(), now],
        )?;
        Ok(())
    }

    /// One page of `tenant`'s tasks, newest first: those with one of `statuses` (any status
    /// when empty), older than the task `before` (a cursor: the last id of the previous page).
    /// A cursor naming no task of `tenant` is [`StoreError::NoTask`].
    pub fn task_page(
        &self,
        tenant: &str,
        statuses: &[&str],
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRow>> {
        let cursor: Option<(i64, String)> = match before {
            None => None,
            Some(id) => Some(
                self.db()
                    .query_row(
                        "SELECT created_ms, id FROM tasks WHERE id = ?1 AND tenant = ?2",
                        params![id, tenant],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| StoreError::NoTask(id.to_string()))?,
            ),
        };
        let statuses = serde_json::to_string(statuses)?;
        let (c_ms, c_id) = cursor.map_or((None, None), |(m, i)| (Some(m), Some(i)));
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, tenant, goal, status, answer, settings, created_ms, updated_ms
             FROM tasks
             WHERE tenant = ?1
               AND (json_array_length(?2) = 0 OR status IN (SELECT value FROM json_each(?2)))
               AND (?3 IS NULL OR created_ms < ?3 OR (created_ms = ?3 AND id < ?4))
             ORDER BY created_ms DESC, id DESC LIMIT ?5",
        )?;
        let rows = st.query_map(
            params![tenant, statuses, c_ms, c_id, limit as i64],
            task_row,
        )?;
        rows.map(|r| r?).collect()
    }

    pub fn set_status(&self, id: &str, status: &str, answer: Option<&str>) -> Result<()> {
        let n = self.db().execute(
            "UPDATE tasks SET status = ?2, answer = COALESCE(?3, answer), updated_ms = ?4
             WHERE id = ?1",
            params![id, status, answer, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NoTask(id.to_string()));
        }
        Ok(())
    }

    pub fn task(&self, id: &str) -> Result<TaskRow> {
        self.db()
            .query_row(
                "SELECT id, tenant, goal, status, answer, settings, created_ms, updated_ms
                 FROM tasks WHERE id = ?1",
                params![id],
                task_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NoTask(id.to_string()))?
    }

    /// Tasks of `tenant` (all tenants when `None`), newest first.
    pub fn tasks(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<TaskRow>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, tenant, goal, status, answer, settings, created_ms, updated_ms
             FROM tasks WHERE ?1 IS NULL OR tenant = ?1
             ORDER BY created_ms DESC, rowid DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![tenant, limit as i64], task_row)?;
        rows.map(|r| r?).collect()
    }

    /// Tasks whose status is one of `statuses` (e.g. the unfinished ones to resume).
    pub fn tasks_with_status(&self, statuses: &[&str]) -> Result<Vec<TaskRow>> {
        Ok(self
            .tasks(None, usize::MAX >> 1)?
            .into_iter()
            .filter(|t| statuses.contains(&t.status.as_str()))
            .collect())
    }

    /// Appends a record and returns its sequence number; committed before returning.
    pub fn append(&self, task_id: &str, kind: &str, payload: &Value) -> Result<i64> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM journal WHERE task_id = ?1",
            params![task_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO journal (task_id, seq, kind, payload, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![task_id, seq, kind, payload.to_string(), now_ms()],
        )?;
        tx.execute(
            "UPDATE tasks SET updated_ms = ?2 WHERE id = ?1",
            params![task_id, now_ms()],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// The task's records in order.
    pub fn records(&self, task_id: &str) -> Result<Vec<Record>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT seq, kind, payload, at_ms FROM journal WHERE task_id = ?1 ORDER BY seq",
        )?;
        let rows = st.query_map(params![task_id], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (seq, kind, payload, at_ms) = r?;
            Ok(Record {
                seq,
                kind,
                payload: serde_json::from_str(&payload)?,
                at_ms,
            })
        })
        .collect()
    }

    pub fn save_memory(
        &self,
        tenant: &str,
        kind: &str,
        text: &str,
        task_id: Option<&str>,
    ) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO memories (tenant, kind, text, task_id, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, kind, text, task_id, now_ms()],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// The `limit` memories of `tenant` best matching `query` (BM25). The query is free text:
    /// it is split into words and any of them may match, so user input cannot inject FTS5
    /// syntax.
    pub fn search_memory(&self, tenant: &str, query: &str, limit: usize) -> Result<Vec<Memory>> {
        let terms: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty() && !STOPWORDS.contains(&w.to_lowercase().as_str()))
            .take(32)
            .map(|w| format!("\"{w}\""))
            .collect();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let fts_query = terms.join(" OR ");
        let db = self.db();
        let mut st = db.prepare(
            "SELECT m.id, m.kind, m.text, m.task_id, m.created_ms, bm25(memories_fts) AS rank
             FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid
             WHERE memories_fts MATCH ?1 AND m.tenant = ?2
             ORDER BY rank LIMIT ?3",
        )?;
        let rows = st.query_map(params![fts_query, tenant, limit as i64], memory_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// The `limit` newest memories of `tenant`, newest first.
    pub fn recent_memories(&self, tenant: &str, limit: usize) -> Result<Vec<Memory>> {
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, kind, text, task_id, created_ms, 0.0 FROM memories WHERE tenant = ?1
             ORDER BY created_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![tenant, limit as i64], memory_row)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Forgets memory `id` if it is `tenant`'s; whether there was such a memory. Another
    /// tenant's id is left alone and answered like an unknown one.
    pub fn delete_memory(&self, tenant: &str, id: i64) -> Result<bool> {
        let n = self.db().execute(
            "DELETE FROM memories WHERE id = ?1 AND tenant = ?2",
            params![id, tenant],
        )?;
        Ok(n > 0)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`]. The version is read and the steps applied inside
/// one immediate (write-locking) transaction, so two processes opening an old file at once
/// cannot both migrate it, and a failed step leaves the file as it was.
fn migrate(conn: &mut Connection) -> Result<()> {
    debug_assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    for step in &MIGRATIONS[found.max(0) as usize..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn memory_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Memory> {
    Ok(Memory {
        id: r.get(0)?,
        kind: r.get(1)?,
        text: r.get(2)?,
        task_id: r.get(3)?,
        created_ms: r.get(4)?,
        rank: r.get(5)?,
    })
}

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TaskRow>> {
    let settings: String = r.get(5)?;
    let row = (|| {
        Ok(TaskRow {
            id: r.get(0)?,
            tenant: r.get(1)?,
            goal: r.get(2)?,
            status: r.get(3)?,
            answer: r.get(4)?,
            settings: Value::Null,
            created_ms: r.get(6)?,
            updated_ms: r.get(7)?,
        })
    })();
    Ok(row.and_then(|mut t: TaskRow| {
        t.settings = serde_json::from_str(&settings)?;
        Ok(t)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tasks_and_journal_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.create_task("t1", "default", "add numbers", &json!({"max_steps": 5}))
                .unwrap();
            s.create_task("t2", "other", "second", &json!({})).unwrap();
            assert_eq!(s.append("t1", "plan", &json!({"steps": ["a"]})).unwrap(), 1);
            assert_eq!(
                s.append("t1", "tool_call", &json!({"tool": "calculator"}))
                    .unwrap(),
                2
            );
            s.set_status("t2", "succeeded", Some("done")).unwrap();
        }
        // Reopened as after a crash: everything committed is there.
        let s = Store::open(&path).unwrap();
        let recs = s.records("t1").unwrap();
        assert_eq!(
            recs.iter()
                .map(|r| (r.seq, r.kind.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "plan"), (2, "tool_call")]
        );
        assert_eq!(recs[1].payload["tool"], "calculator");
        let t1 = s.task("t1").unwrap();
        assert_eq!(
            (t1.status.as_str(), t1.settings["max_steps"].as_u64()),
            ("running", Some(5))
        );
        assert_eq!(s.task("t2").unwrap().answer.as_deref(), Some("done"));
        assert_eq!(s.tasks(None, 10).unwrap().len(), 2);
        assert_eq!(s.tasks(Some("other"), 10).unwrap()[0].id, "t2");
        assert_eq!(s.tasks_with_status(&["running"]).unwrap().len(), 1);
        s.insert_task("t3", "default", "third", "queued", &json!({}))
            .unwrap();
        assert_eq!(s.task("t3").unwrap().status, "queued");
        assert!(matches!(s.task("nope"), Err(StoreError::NoTask(_))));
        assert!(matches!(
            s.set_status("nope", "x", None),
            Err(StoreError::NoTask(_))
        ));
        // Journal records of a task that does not exist are refused.
        assert!(s.append("ghost", "plan", &json!({})).is_err());
    }

    #[test]
    fn task_pages_filter_by_tenant_and_status_and_follow_the_cursor() {
        let s = Store::in_memory().unwrap();
        for i in 0..7 {
            let status = if i % 2 == 0 { "queued" } else { "succeeded" };
            s.insert_task(&format!("t{i}"), "a", "g", status, &json!({}))
                .unwrap();
        }
        s.insert_task("x", "b", "g", "queued", &json!({})).unwrap();
        let mut seen = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let page = s.task_page("a", &[], before.as_deref(), 3).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            before = page.last().map(|t| t.id.clone());
            seen.extend(page.into_iter().map(|t| t.id));
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 7, "every task once: {seen:?}");
        let queued = s.task_page("a", &["queued"], None, 100).unwrap();
        assert_eq!(queued.len(), 4);
        assert!(
            queued
                .iter()
                .all(|t| t.status == "queued" && t.tenant == "a")
        );
        let both = s
            .task_page("a", &["queued", "succeeded"], None, 100)
            .unwrap();
        assert_eq!(both.len(), 7);
        // Another tenant's task is no cursor.
        assert!(matches!(
            s.task_page("a", &[], Some("x"), 3),
            Err(StoreError::NoTask(_))
        ));
    }

    #[test]
    fn memory_search_ranks_per_tenant_and_ignores_query_syntax() {
        let s = Store::in_memory().unwrap();
        s.save_memory(
            "a",
            "fact",
            "The office wifi password is on the fridge",
            None,
        )
        .unwrap();
        s.save_memory(
            "a",
            "fact",
            "Invoices are due on the 5th of each month",
            None,
        )
        .unwrap();
        s.save_memory(
            "a",
            "outcome",
            "Computed monthly invoice totals with sql",
            Some("t9"),
        )
        .unwrap();
        s.save_memory("b", "fact", "Invoices for tenant b are private", None)
            .unwrap();
        let hits = s.search_memory("a", "when are invoices due?", 5).unwrap();
        assert_eq!(hits.len(), 2, "{hits:?}");
        assert!(hits[0].text.contains("due on the 5th"), "{hits:?}");
        assert!(hits.iter().all(|h| !h.text.contains("tenant b")));
        // Common words alone recall nothing.
        assert!(
            s.search_memory("a", "What is the answer?", 5)
                .unwrap()
                .is_empty()
        );
        // FTS5 operators and quotes in user text are just words.
        assert!(s.search_memory("a", "\"unbalanced AND (", 5).is_ok());
        assert!(s.search_memory("a", "  ", 5).unwrap().is_empty());
    }

    #[test]
    fn memories_list_newest_first_and_delete_only_within_the_tenant() {
        let s = Store::in_memory().unwrap();
        let mut a_ids = Vec::new();
        for i in 0..4 {
            a_ids.push(
                s.save_memory("a", "fact", &format!("fact {i}"), None)
                    .unwrap(),
            );
        }
        let b1 = s.save_memory("b", "fact", "b's own fact", None).unwrap();
        let texts = |v: Vec<Memory>| v.into_iter().map(|m| m.text).collect::<Vec<_>>();
        // Saved within one millisecond, so the id breaks the tie: still newest first.
        assert_eq!(
            texts(s.recent_memories("a", 3).unwrap()),
            ["fact 3", "fact 2", "fact 1"]
        );
        assert_eq!(texts(s.recent_memories("b", 10).unwrap()), ["b's own fact"]);
        assert!(s.recent_memories("nobody", 10).unwrap().is_empty());
        let m = &s.recent_memories("a", 1).unwrap()[0];
        assert!(m.created_ms > 0 && m.id == a_ids[3], "{m:?}");

        // Another tenant's id is refused like an unknown one, and stays.
        assert!(!s.delete_memory("a", b1).unwrap());
        assert!(!s.delete_memory("a", 999_999).unwrap());
        assert_eq!(s.recent_memories("b", 10).unwrap().len(), 1);
        assert!(s.delete_memory("a", a_ids[1]).unwrap());
        assert!(!s.delete_memory("a", a_ids[1]).unwrap(), "deleted once");
        assert_eq!(
            texts(s.recent_memories("a", 10).unwrap()),
            ["fact 3", "fact 2", "fact 0"]
        );
        // The search index forgets it too.
        s.save_memory("a", "fact", "zebras graze", None).unwrap();
        let z = s.search_memory("a", "zebras", 5).unwrap();
        assert_eq!(z.len(), 1);
        assert!(s.delete_memory("a", z[0].id).unwrap());
        assert!(s.search_memory("a", "zebras", 5).unwrap().is_empty());
    }

    /// A database written by the version-1 code (its exact schema, taken from git history
    /// rather than from `MIGRATIONS`, so editing a released step cannot hide here) opens in
    /// place: its data stays, the new tables work, the version is current.
    #[test]
    fn a_version_1_database_is_upgraded_in_place() {
        const V1_AS_RELEASED: &str = "
CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, goal TEXT NOT NULL,
    status TEXT NOT NULL, answer TEXT, settings TEXT NOT NULL, created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_by_time ON tasks(tenant, created_ms);
CREATE TABLE IF NOT EXISTS journal (task_id TEXT NOT NULL REFERENCES tasks(id), seq INTEGER NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (task_id, seq));
CREATE TABLE IF NOT EXISTS memories (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL,
    text TEXT NOT NULL, task_id TEXT, created_ms INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(
    text, content='memories', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER IF NOT EXISTS memories_ai AFTER INSERT ON memories BEGIN
    INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS memories_ad AFTER DELETE ON memories BEGIN
    INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
PRAGMA user_version = 1;
INSERT INTO tasks VALUES ('old', 'default', 'from v1', 'succeeded', '42', '{}', 1, 2);
INSERT INTO journal VALUES ('old', 1, 'final', '{\"answer\": \"42\"}', 3);
INSERT INTO memories (tenant, kind, text, created_ms) VALUES ('default', 'fact', 'llamas hum', 4);
";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(V1_AS_RELEASED)
            .unwrap();
        let s = Store::open(&path).unwrap();
        assert_eq!(s.task("old").unwrap().answer.as_deref(), Some("42"));
        assert_eq!(s.records("old").unwrap()[0].payload["answer"], "42");
        assert_eq!(s.search_memory("default", "llamas", 5).unwrap().len(), 1);
        let k = s
            .create_key("default", "", &["tasks"], KeyLimits::default())
            .unwrap();
        s.append_audit(&AuditEntry {
            action: "keys.create".into(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .unwrap();
        drop(s);
        // Reopening a current database changes nothing and loses nothing.
        let s = Store::open(&path).unwrap();
        assert!(s.key(&k.row.id).unwrap().is_some());
        assert_eq!(s.audit(&AuditFilter::default()).unwrap().len(), 1);
        let version: i64 = s
            .db()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(version, 2);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::NewerSchema { found: 99, .. })
        ));
    }
}

/// A query result as text: a header line, then rows, values separated by " | ".
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// More rows existed than were returned.
    pub truncated: bool,
    /// Rows changed by a writing statement.
    pub changed: usize,
}

/// Runs one SQL statement against the SQLite file at `path` (the `sql` tool). Read-only
/// unless `allow_writes`: the file is opened with SQLite's read-only flag, so no statement can
/// change it, whatever it says. At most `max_rows` rows come back.
pub fn query_file(
    path: &Path,
    sql: &str,
    allow_writes: bool,
    max_rows: usize,
) -> Result<QueryResult> {
    use rusqlite::OpenFlags;
    let flags = if allow_writes {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut st = conn.prepare(sql)?;
    let columns: Vec<String> = st.column_names().map(|c| c.to_string()).collect();
    if columns.is_empty() {
        let changed = st.execute([])?;
        return Ok(QueryResult {
            columns,
            rows: Vec::new(),
            truncated: false,
            changed,
        });
    }
    let n = columns.len();
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut q = st.query([])?;
    while let Some(r) = q.next()? {
        if rows.len() == max_rows {
            truncated = true;
            break;
        }
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            use rusqlite::types::ValueRef;
            row.push(match r.get_ref(i)? {
                ValueRef::Null => "NULL".to_string(),
                ValueRef::Integer(v) => v.to_string(),
                ValueRef::Real(v) => v.to_string(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
            });
        }
        rows.push(row);
    }
    Ok(QueryResult {
        columns,
        rows,
        truncated,
        changed: 0,
    })
}

impl std::fmt::Display for QueryResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.columns.is_empty() {
            return write!(f, "{} rows changed", self.changed);
        }
        writeln!(f, "{}", self.columns.join(" | "))?;
        for r in &self.rows {
            writeln!(f, "{}", r.join(" | "))?;
        }
        if self.truncated {
            writeln!(f, "[more rows not shown]")?;
        } else if self.rows.is_empty() {
            writeln!(f, "(no rows)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn queries_are_read_only_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sales.db");
        query_file(
            &db,
            "CREATE TABLE s (region TEXT, amount INTEGER)",
            true,
            10,
        )
        .unwrap();
        let w = query_file(
            &db,
            "INSERT INTO s VALUES ('north', 5), ('south', 7), ('north', 1)",
            true,
            10,
        )
        .unwrap();
        assert_eq!(w.changed, 3);
        let r = query_file(
            &db,
            "SELECT region, SUM(amount) AS total FROM s GROUP BY region ORDER BY region",
            false,
            10,
        )
        .unwrap();
        assert_eq!(r.to_string(), "region | total\nnorth | 6\nsouth | 7\n");
        let r = query_file(&db, "SELECT * FROM s", false, 2).unwrap();
        assert!(r.truncated && r.rows.len() == 2);
        // Read-only: every kind of write fails.
        for sql in [
            "DELETE FROM s",
            "DROP TABLE s",
            "INSERT INTO s VALUES ('x', 1)",
        ] {
            let e = query_file(&db, sql, false, 10).unwrap_err();
            assert!(e.to_string().contains("readonly"), "{sql}: {e}");
        }
        assert!(query_file(&db, "SELEC nonsense", false, 10).is_err());
        // A read-only open never creates a file.
        assert!(query_file(&dir.path().join("missing.db"), "SELECT 1", false, 10).is_err());
        assert!(!dir.path().join("missing.db").exists());
    }
}
