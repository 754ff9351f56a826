//! API keys: `agk_<id>_<secret>`, where `id` (16 hex digits) names the row and `secret` (64 hex
//! digits, 32 bytes from the operating system's random source) proves possession. Only the
//! SHA-256 of the secret is stored; the plaintext exists once, in [`NewKey`], for the caller to
//! show and forget. Secrets are full-entropy random, so a fast hash is enough: there is nothing
//! to guess, and no password-style stretching is needed.
//!
//! Verification ([`KeyRow::matches`]) hashes the presented secret and compares the hashes with
//! `subtle`'s constant-time equality, so response time says nothing about how many bytes were
//! right. [`verify_unknown`] does the same work against a dummy hash, for callers that want an
//! unknown id to cost as much as a wrong secret.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{Result, Store, StoreError, now_ms};

/// Every key starts with this, so a leaked key is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "agk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// Per-key limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyLimits {
    /// Requests per minute (a token bucket of this size, refilled evenly).
    pub requests_per_minute: Option<u32>,
    /// Agent tasks of this key running at once.
    pub max_running_tasks: Option<u32>,
}

/// A key as stored: everything but the secret, plus the secret's hash.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// Scope names as given at creation ("tasks", "models", "admin"); the server decides
    /// what each allows.
    pub scopes: Vec<String>,
    pub limits: KeyLimits,
    pub created_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    secret_hash: [u8; 32],
}

// Not derived: the hash is not secret, but it has no business in logs either.
impl std::fmt::Debug for KeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRow")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("limits", &self.limits)
            .field("revoked_ms", &self.revoked_ms)
            .finish_non_exhaustive()
    }
}

impl KeyRow {
    /// Whether `secret` is this key's, in time independent of where it differs. A revoked key
    /// matches nothing.
    pub fn matches(&self, secret: &str) -> bool {
        let ok: bool = hash_secret(secret).ct_eq(&self.secret_hash).into();
        ok && self.revoked_ms.is_none()
    }

    pub fn revoked(&self) -> bool {
        self.revoked_ms.is_some()
    }
}

/// A key just created: `key` is the whole plaintext, shown once and stored nowhere.
pub struct NewKey {
    pub row: KeyRow,
    pub key: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

/// Splits a presented key into (id, secret) when it has the right shape, without judging
/// whether it is valid. Shape is public knowledge, so this need not be constant-time.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == 2 * n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, ID_BYTES) && hex(secret, SECRET_BYTES)).then_some((id, secret))
}

/// The same hashing and comparison as [`KeyRow::matches`] against a hash nobody holds: a
/// caller that found no key for the id calls this so that an unknown id and a wrong secret
/// take the same time. Always false.
pub fn verify_unknown(secret: &str) -> bool {
    let dummy = [0u8; 32];
    let _ = bool::from(hash_secret(secret).ct_eq(&dummy));
    false
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn valid_scope_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

const KEY_COLUMNS: &str = "id, tenant, name, scopes, secret_hash, created_ms, last_used_ms, \
                           revoked_ms, rpm, max_tasks";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRow> {
    let scopes: String = r.get(3)?;
    let hash: Vec<u8> = r.get(4)?;
    // A hash of the wrong length (a damaged row) becomes one nothing matches.
    let secret_hash = <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0xff; 32]);
    let limit = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
    Ok(KeyRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        name: r.get(2)?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        secret_hash,
        created_ms: r.get(5)?,
        last_used_ms: r.get(6)?,
        revoked_ms: r.get(7)?,
        limits: KeyLimits {
            requests_per_minute: limit(r.get(8)?),
            max_running_tasks: limit(r.get(9)?),
        },
    })
}

impl Store {
    /// Creates a key for `tenant` with the given scope names and limits and returns it with
    /// its plaintext — the only time the plaintext exists.
    pub fn create_key(
        &self,
        tenant: &str,
        name: &str,
        scopes: &[&str],
        limits: KeyLimits,
    ) -> Result<NewKey> {
        if tenant.trim().is_empty() {
            return Err(StoreError::InvalidKey("the tenant name is empty".into()));
        }
        if let Some(bad) = scopes.iter().find(|s| !valid_scope_name(s)) {
            return Err(StoreError::InvalidKey(format!("bad scope name {bad:?}")));
        }
        if limits.requests_per_minute == Some(0) || limits.max_running_tasks == Some(0) {
            return Err(StoreError::InvalidKey(
                "a limit of 0 would make the key useless; leave it out for no limit".into(),
            ));
        }
        let id = random_hex(ID_BYTES)?;
        let secret = random_hex(SECRET_BYTES)?;
        let row = KeyRow {
            id: id.clone(),
            tenant: tenant.to_string(),
            name: name.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            limits,
            created_ms: now_ms(),
            last_used_ms: None,
            revoked_ms: None,
            secret_hash: hash_secret(&secret),
        };
        self.db().execute(
            &format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL, ?7, ?8)"),
            params![
                row.id,
                row.tenant,
                row.name,
                row.scopes.join(","),
                row.secret_hash.as_slice(),
                row.created_ms,
                limits.requests_per_minute,
                limits.max_running_tasks,
            ],
        )?;
        Ok(NewKey {
            key: format!("{KEY_PREFIX}{id}_{secret}"),
            row,
        })
    }

    /// The key with this id, revoked or not.
    pub fn key(&self, id: &str) -> Result<Option<KeyRow>> {
        Ok(self
            .db()
            .query_row(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
                params![id],
                key_row,
            )
            .optional()?)
    }

    /// Keys of `tenant` (all when `None`), oldest first.
    pub fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR tenant = ?1
             ORDER BY created_ms, rowid"
        ))?;
        let rows = st.query_map(params![tenant], key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a key for good; revoking it again keeps the first time.
    pub fn revoke_key(&self, id: &str) -> Result<()> {
        let n = self.db().execute(
            "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE id = ?1",
            params![id, now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NoKey(id.to_string()));
        }
        Ok(())
    }

    /// Records that the key was used now.
    pub fn touch_key(&self, id: &str) -> Result<()> {
        self.db().execute(
            "UPDATE api_keys SET last_used_ms = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_verified_and_revoked() {
        let s = Store::in_memory().unwrap();
        let limits = KeyLimits {
            requests_per_minute: Some(60),
            max_running_tasks: Some(2),
        };
        let k = s
            .create_key("acme", "ci", &["tasks", "models"], limits)
            .unwrap();
        let (id, secret) = parse_key(&k.key).expect("well-formed");
        assert_eq!(id, k.row.id);
        assert_eq!(secret.len(), 64);
        let row = s.key(id).unwrap().expect("stored");
        assert_eq!(row, k.row);
        assert_eq!((row.tenant.as_str(), row.name.as_str()), ("acme", "ci"));
        assert_eq!(row.scopes, ["tasks", "models"]);
        assert_eq!(row.limits, limits);
        assert!(row.matches(secret));
        // One changed digit anywhere fails; so does another key's secret.
        for i in [0, 31, 63] {
            let mut wrong = secret.as_bytes().to_vec();
            wrong[i] = if wrong[i] == b'0' { b'1' } else { b'0' };
            assert!(!row.matches(std::str::from_utf8(&wrong).unwrap()));
        }
        let other = s
            .create_key("acme", "", &["tasks"], KeyLimits::default())
            .unwrap();
        assert_ne!(other.row.id, k.row.id);
        assert!(!row.matches(parse_key(&other.key).unwrap().1));
        assert!(!verify_unknown(secret));
        assert!(s.key("0000000000000000").unwrap().is_none());

        s.touch_key(id).unwrap();
        assert!(s.key(id).unwrap().unwrap().last_used_ms.is_some());
        assert_eq!(s.keys(None).unwrap().len(), 2);
        assert_eq!(s.keys(Some("acme")).unwrap()[0].id, k.row.id);
        assert!(s.keys(Some("other")).unwrap().is_empty());

        s.revoke_key(id).unwrap();
        let revoked = s.key(id).unwrap().unwrap();
        assert!(revoked.revoked() && !revoked.matches(secret));
        let first = revoked.revoked_ms;
        s.revoke_key(id).unwrap();
        assert_eq!(s.key(id).unwrap().unwrap().revoked_ms, first);
        assert!(matches!(s.revoke_key("nope"), Err(StoreError::NoKey(_))));
    }

    #[test]
    fn malformed_keys_and_settings_are_refused() {
        let good = format!("agk_{}_{}", "a".repeat(16), "b".repeat(64));
        assert!(parse_key(&good).is_some());
        for bad in [
            "",
            "agk_",
            "Bearer x",
            &good[1..],
            &good[..good.len() - 1],
            &format!("agk_{}_{}", "g".repeat(16), "b".repeat(64)),
            &format!("agk_{}-{}", "a".repeat(16), "b".repeat(64)),
            &format!("agk_{}_{}_", "a".repeat(16), "b".repeat(64)),
        ] {
            assert!(parse_key(bad).is_none(), "{bad:?}");
        }
        let s = Store::in_memory().unwrap();
        let none = KeyLimits::default();
        assert!(s.create_key(" ", "", &["tasks"], none).is_err());
        assert!(s.create_key("t", "", &["tasks,admin"], none).is_err());
        let zero = KeyLimits {
            requests_per_minute: Some(0),
            ..none
        };
        assert!(s.create_key("t", "", &["tasks"], zero).is_err());
        assert!(s.keys(None).unwrap().is_empty());
    }

    /// The plaintext secret is nowhere in the database file (nor its WAL), in text or in
    /// bytes; only its hash is.
    #[test]
    fn only_the_hash_reaches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = Store::open(&path).unwrap();
        let k = s
            .create_key("acme", "ops", &["admin"], KeyLimits::default())
            .unwrap();
        let (_, secret) = parse_key(&k.key).unwrap();
        let secret_bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let hash = hash_secret(secret);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            files.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let contains = |needle: &[u8]| files.windows(needle.len()).any(|w| w == needle);
        // The check can fail: the hash itself is found.
        assert!(contains(&hash), "the hash should be stored");
        assert!(contains(k.row.id.as_bytes()));
        assert!(!contains(secret.as_bytes()), "plaintext secret on disk");
        assert!(!contains(secret.to_uppercase().as_bytes()));
        assert!(!contains(&secret_bytes), "raw secret bytes on disk");
        assert!(!contains(k.key.as_bytes()));
    }
}
