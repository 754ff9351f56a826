//! The audit log: one row per thing worth answering for later — a mutating API request, a
//! refused authentication, a key created or revoked — with who (tenant, key id), what (action,
//! target), when, and how it ended. Rows are only appended; nothing here updates or deletes.

use rusqlite::params;
use serde_json::Value;

use crate::{Result, Store, now_ms};

/// What to record. `detail` is free-form JSON (never a secret).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct AuditEntry {
    /// `None` when the caller could not be identified (a refused key).
    pub tenant: Option<String>,
    pub key_id: Option<String>,
    /// E.g. "POST /v1/tasks", "keys.create".
    pub action: String,
    /// What the action was applied to, when it is not in the action itself (a key id).
    pub target: Option<String>,
    /// The HTTP status, for requests.
    pub status: Option<u16>,
    /// "ok", "refused" or "error".
    pub outcome: String,
    pub detail: Value,
}

/// A recorded entry; serialised flat (`id`, `at_ms`, then the entry's fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Which rows to read; the default is the newest 100 of every tenant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditFilter {
    pub tenant: Option<String>,
    /// Only rows at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// At most this many rows (the newest); 0 means 100.
    pub limit: usize,
}

impl Store {
    /// Appends one entry; committed before returning.
    pub fn append_audit(&self, e: &AuditEntry) -> Result<i64> {
        let db = self.db();
        db.execute(
            "INSERT INTO audit (at_ms, tenant, key_id, action, target, status, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now_ms(),
                e.tenant,
                e.key_id,
                e.action,
                e.target,
                e.status,
                e.outcome,
                e.detail.to_string()
            ],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// Rows matching `f`, newest first.
    pub fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let limit = if f.limit == 0 { 100 } else { f.limit };
        let db = self.db();
        let mut st = db.prepare(
            "SELECT id, at_ms, tenant, key_id, action, target, status, outcome, detail FROM audit
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR at_ms >= ?2)
             ORDER BY at_ms DESC, id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![f.tenant, f.since_ms, limit.min(i64::MAX as usize) as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    AuditEntry {
                        tenant: r.get(2)?,
                        key_id: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        status: r.get(6)?,
                        outcome: r.get(7)?,
                        detail: Value::Null,
                    },
                    r.get::<_, String>(8)?,
                ))
            },
        )?;
        rows.map(|r| {
            let (id, at_ms, mut entry, detail) = r?;
            entry.detail = serde_json::from_str(&detail)?;
            Ok(AuditRow { id, at_ms, entry })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audit_rows_are_appended_and_filtered() {
        let s = Store::in_memory().unwrap();
        let e = |tenant: Option<&str>, action: &str, status: u16| AuditEntry {
            tenant: tenant.map(str::to_string),
            key_id: tenant.map(|_| "k1".to_string()),
            action: action.into(),
            target: None,
            status: Some(status),
            outcome: if status < 400 { "ok" } else { "refused" }.into(),
            detail: json!({"peer": "127.0.0.1:5"}),
        };
        s.append_audit(&e(Some("a"), "POST /v1/tasks", 201))
            .unwrap();
        s.append_audit(&e(None, "GET /v1/models", 401)).unwrap();
        s.append_audit(&e(Some("b"), "DELETE /v1/tasks/x", 204))
            .unwrap();
        s.append_audit(&e(Some("a"), "POST /v1/tasks/y/cancel", 200))
            .unwrap();

        let all = s.audit(&AuditFilter::default()).unwrap();
        assert_eq!(all.len(), 4);
        // Newest first, faithfully returned.
        assert_eq!(all[0].entry, e(Some("a"), "POST /v1/tasks/y/cancel", 200));
        assert_eq!(all[3].entry.action, "POST /v1/tasks");
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));

        let a = s
            .audit(&AuditFilter {
                tenant: Some("a".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|r| r.entry.tenant.as_deref() == Some("a")));

        let one = s
            .audit(&AuditFilter {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, all[0].id);

        let future = s
            .audit(&AuditFilter {
                since_ms: Some(now_ms() + 60_000),
                ..Default::default()
            })
            .unwrap();
        assert!(future.is_empty());
        let past = s
            .audit(&AuditFilter {
                since_ms: Some(all[3].at_ms),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(past.len(), 4);
    }
}
