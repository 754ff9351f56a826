//! `autoglm keys create|list|revoke` and `autoglm audit`: API keys and the audit log in the state
//! database under `$AUTOGLM_HOME`. A new key's plaintext goes to stdout once and is stored
//! nowhere; key management is itself written to the audit log.

use anyhow::{Context, Result, bail};
use autoglm_server::auth::Scopes;
use autoglm_store::{AuditEntry, AuditFilter, KeyLimits, KeyRow, now_ms};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::agent_cmd::open_store;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key for TENANT; it is printed once (stdout) and never shown again.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: tasks, models, admin.
        #[arg(long)]
        scopes: String,
        /// A label for people ("ci", "alice's laptop").
        #[arg(long, default_value = "")]
        name: String,
        /// Requests per minute (default: no limit).
        #[arg(long)]
        rpm: Option<u32>,
        /// Agent tasks running at once (default: no limit of its own).
        #[arg(long)]
        max_tasks: Option<u32>,
        /// Print one JSON object (the key and its settings) instead of the bare key.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id; a running server refuses it within a second or so.
    Revoke { id: String },
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only this tenant's rows.
    #[arg(long)]
    tenant: Option<String>,
    /// Only rows this recent: a number and a unit, e.g. 90s, 15m, 2h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// At most this many rows (the newest).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

fn key_json(k: &KeyRow) -> Value {
    json!({
        "id": k.id, "tenant": k.tenant, "name": k.name, "scopes": k.scopes,
        "rpm": k.limits.requests_per_minute, "max_tasks": k.limits.max_running_tasks,
        "created_ms": k.created_ms, "last_used_ms": k.last_used_ms, "revoked_ms": k.revoked_ms,
    })
}

pub fn keys(cmd: KeysCommand) -> Result<()> {
    let store = open_store()?;
    match cmd {
        KeysCommand::Create {
            tenant,
            scopes,
            name,
            rpm,
            max_tasks,
            json,
        } => {
            let names = Scopes::parse_list(&scopes).map_err(anyhow::Error::msg)?;
            let limits = KeyLimits {
                requests_per_minute: rpm,
                max_running_tasks: max_tasks,
            };
            let new = store.create_key(tenant.trim(), &name, &names, limits)?;
            store.append_audit(&AuditEntry {
                tenant: Some(new.row.tenant.clone()),
                key_id: None,
                action: "keys.create".into(),
                target: Some(new.row.id.clone()),
                status: None,
                outcome: "ok".into(),
                detail: json!({"via": "cli", "scopes": new.row.scopes, "name": new.row.name,
                               "rpm": rpm, "max_tasks": max_tasks}),
            })?;
            if json {
                let mut v = key_json(&new.row);
                v["key"] = Value::String(new.key);
                println!("{v}");
            } else {
                println!("{}", new.key);
            }
            eprintln!(
                "created key {} for tenant {} ({}); store it now: it will not be shown again",
                new.row.id,
                new.row.tenant,
                new.row.scopes.join(",")
            );
            Ok(())
        }
        KeysCommand::List { tenant, json } => {
            let list = store.keys(tenant.as_deref())?;
            if json {
                println!("{}", Value::Array(list.iter().map(key_json).collect()));
                return Ok(());
            }
            if list.is_empty() {
                eprintln!(
                    "no keys (create one with `autoglm keys create --tenant NAME --scopes tasks,models`)"
                );
            }
            for k in list {
                let limit = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
                println!(
                    "{}  {:<12}  {:<20}  {:<18}  rpm {:<5} tasks {:<4}  {}  last used {}{}",
                    k.id,
                    k.tenant,
                    if k.name.is_empty() { "-" } else { &k.name },
                    k.scopes.join(","),
                    limit(k.limits.requests_per_minute),
                    limit(k.limits.max_running_tasks),
                    utc(k.created_ms),
                    k.last_used_ms.map_or("never".into(), utc),
                    k.revoked_ms
                        .map_or(String::new(), |t| format!("  REVOKED {}", utc(t))),
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id } => {
            let found = store.key(&id)?;
            let result = store.revoke_key(&id);
            store.append_audit(&AuditEntry {
                tenant: found.as_ref().map(|k| k.tenant.clone()),
                key_id: None,
                action: "keys.revoke".into(),
                target: Some(id.clone()),
                status: None,
                outcome: if result.is_ok() { "ok" } else { "error" }.into(),
                detail: json!({"via": "cli"}),
            })?;
            result?;
            eprintln!("revoked key {id}");
            Ok(())
        }
    }
}

pub fn audit(a: AuditArgs) -> Result<()> {
    let since_ms = match &a.since {
        Some(s) => Some(now_ms() - parse_age(s)?),
        None => None,
    };
    if a.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let rows = open_store()?.audit(&AuditFilter {
        tenant: a.tenant,
        since_ms,
        limit: a.limit,
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    for r in rows {
        let e = &r.entry;
        let mut line = format!(
            "{}  {:<12}  {:<16}  {:<7}  {}",
            utc(r.at_ms),
            e.tenant.as_deref().unwrap_or("-"),
            e.key_id.as_deref().unwrap_or("-"),
            e.status
                .map_or(e.outcome.clone(), |s| format!("{s} {}", e.outcome)),
            e.action
        );
        if let Some(t) = &e.target {
            line.push_str(&format!(" {t}"));
        }
        if e.detail.as_object().is_some_and(|o| !o.is_empty()) {
            line.push_str(&format!("  {}", e.detail));
        }
        println!("{line}");
    }
    Ok(())
}

/// "90s", "15m", "2h", "7d" in milliseconds.
fn parse_age(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--since {s:?}: expected a number and a unit (s, m, h, d)"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("--since {s:?}: the unit must be s, m, h or d"),
    };
    n.checked_mul(unit_ms)
        .with_context(|| format!("--since {s:?} is too long"))
}

/// Unix milliseconds as "YYYY-MM-DD HH:MM:SSZ" (UTC; Howard Hinnant's civil-from-days).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_ages() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59Z");
        assert_eq!(parse_age("15m").unwrap(), 900_000);
        assert_eq!(parse_age("2d").unwrap(), 172_800_000);
        assert!(parse_age("15").is_err() && parse_age("m").is_err() && parse_age("1y").is_err());
    }
}
