//! Tools over the task's data: `sql` (a SQLite file in the workspace, read-only unless the task
//! allows writes) and `memory_search` / `memory_save` (long-term memory of the tenant, searched
//! by relevance).

use std::sync::Arc;

use autoglm_store::Store;
use serde_json::{Value, json};

use crate::{BoxFuture, Tool, ToolContext, ToolError, ToolOutput, confine, str_arg};

pub struct Sql;

impl Tool for Sql {
    fn name(&self) -> &str {
        "sql"
    }
    fn description(&self) -> &str {
        "Run one SQL query on a SQLite database file in the workspace. Example: \
         {\"database\": \"sales.db\", \"query\": \"SELECT region, SUM(amount) FROM sales GROUP BY region\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "database": {"type": "string", "maxLength": 200},
            "query": {"type": "string", "maxLength": 2000}},
            "required": ["database", "query"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let path = confine(&ctx.workspace, str_arg(&args, "database")?)?;
            let query = str_arg(&args, "query")?.to_string();
            let writes = ctx.allow_sql_writes;
            // SQLite is blocking; keep it off the async workers.
            let r = tokio::task::spawn_blocking(move || {
                autoglm_store::query_file(&path, &query, writes, 200)
            })
            .await
            .map_err(|e| ToolError::Failed(e.to_string()))?
            .map_err(|e| ToolError::Failed(e.to_string()))?;
            Ok(ToolOutput::text(r.to_string()))
        })
    }
}

pub struct MemorySearch {
    pub store: Arc<Store>,
    pub tenant: String,
}

pub struct MemorySave {
    pub store: Arc<Store>,
    pub tenant: String,
}

impl Tool for MemorySearch {
    fn name(&self) -> &str {
        "memory_search"
    }
    fn description(&self) -> &str {
        "Search long-term memory for facts saved earlier. Example: {\"query\": \"invoice due date\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"query": {"type": "string", "maxLength": 200}},
               "required": ["query"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        _ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let hits = self
                .store
                .search_memory(&self.tenant, str_arg(&args, "query")?, 5)
                .map_err(|e| ToolError::Failed(e.to_string()))?;
            if hits.is_empty() {
                return Ok(ToolOutput::text("nothing found"));
            }
            Ok(ToolOutput::text(
                hits.iter()
                    .map(|m| format!("- {}", m.text))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ))
        })
    }
}

impl Tool for MemorySave {
    fn name(&self) -> &str {
        "memory_save"
    }
    fn description(&self) -> &str {
        "Save a fact to long-term memory for later tasks. Example: {\"fact\": \"Invoices are due on the 5th\"}"
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"fact": {"type": "string", "maxLength": 1000}},
               "required": ["fact"], "additionalProperties": false})
    }
    fn call<'a>(
        &'a self,
        args: Value,
        _ctx: &'a ToolContext,
    ) -> BoxFuture<'a, Result<ToolOutput, ToolError>> {
        Box::pin(async move {
            let fact = str_arg(&args, "fact")?.trim();
            if fact.is_empty() {
                return Err(ToolError::InvalidArguments("the fact is empty".into()));
            }
            self.store
                .save_memory(&self.tenant, "fact", fact, None)
                .map_err(|e| ToolError::Failed(e.to_string()))?;
            Ok(ToolOutput::text("saved"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolRegistry;

    #[test]
    fn sql_and_memory_tools() {
        let ws = tempfile::tempdir().unwrap();
        let db = ws.path().join("sales.db");
        autoglm_store::query_file(&db, "CREATE TABLE s (region TEXT, amount INTEGER)", true, 1)
            .unwrap();
        autoglm_store::query_file(
            &db,
            "INSERT INTO s VALUES ('north', 5), ('south', 7)",
            true,
            1,
        )
        .unwrap();
        let store = Arc::new(Store::in_memory().unwrap());
        let mut reg = ToolRegistry::builtin();
        reg.add(Arc::new(Sql));
        reg.add(Arc::new(MemorySave {
            store: store.clone(),
            tenant: "t".into(),
        }));
        reg.add(Arc::new(MemorySearch {
            store: store.clone(),
            tenant: "t".into(),
        }));
        let mut ctx = ToolContext::new(ws.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let q = |sql: &str| json!({"database": "sales.db", "query": sql});
            let r = reg
                .call("sql", q("SELECT SUM(amount) AS total FROM s"), &ctx)
                .await
                .unwrap();
            assert_eq!(r.content, "total\n12\n");
            let e = reg.call("sql", q("DELETE FROM s"), &ctx).await.unwrap_err();
            assert!(e.to_string().contains("readonly"), "{e}");
            ctx.allow_sql_writes = true;
            let r = reg
                .call("sql", q("DELETE FROM s WHERE region = 'north'"), &ctx)
                .await
                .unwrap();
            assert_eq!(r.content, "1 rows changed");
            let e = reg
                .call(
                    "sql",
                    json!({"database": "../x.db", "query": "SELECT 1"}),
                    &ctx,
                )
                .await
                .unwrap_err();
            assert!(matches!(e, ToolError::Denied(_)));

            reg.call(
                "memory_save",
                json!({"fact": "The deploy key rotates every Monday"}),
                &ctx,
            )
            .await
            .unwrap();
            let r = reg
                .call(
                    "memory_search",
                    json!({"query": "when does the deploy key rotate"}),
                    &ctx,
                )
                .await
                .unwrap();
            assert_eq!(r.content, "- The deploy key rotates every Monday");
            let r = reg
                .call("memory_search", json!({"query": "penguins"}), &ctx)
                .await
                .unwrap();
            assert_eq!(r.content, "nothing found");
        });
    }
}
