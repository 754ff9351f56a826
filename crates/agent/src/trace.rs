//! A task's trace: its outcome as recorded plus its records nested by key, the one shape both
//! `autoglm trace --json` and the server's `GET /v1/tasks/{id}/trace` return.

use autoglm_store::Store;
use serde_json::{Value, json};

use crate::{Agent, AgentError};

/// The outcome's JSON (`task_id`, `status`, `reason`, `answer`, `steps`, `usage`) with `tree`.
pub fn trace(store: &Store, task_id: &str) -> Result<Value, AgentError> {
    let o = Agent::outcome(store, task_id)?;
    let mut v = o.to_json();
    v["tree"] = trace_tree(&o.steps);
    Ok(v)
}

/// Records nested by key prefix: "plan0/s1/a0/r0/t0" sits under "plan0/s1/a0/r0".
pub fn trace_tree(steps: &[Value]) -> Value {
    fn insert(node: &mut Value, path: &[&str], step: &Value) {
        let Some((head, rest)) = path.split_first() else {
            if let Some(a) = node["records"].as_array_mut() {
                a.push(step.clone());
            }
            return;
        };
        let children = node["children"].as_array_mut();
        let Some(children) = children else {
            return;
        };
        let i = match children.iter().position(|c| c["name"] == *head) {
            Some(i) => i,
            None => {
                children.push(json!({"name": head, "records": [], "children": []}));
                children.len() - 1
            }
        };
        insert(&mut children[i], rest, step);
    }
    let mut root = json!({"name": "task", "records": [], "children": []});
    for s in steps {
        let key = s["key"].as_str().unwrap_or("");
        let path: Vec<&str> = key.split('/').filter(|p| !p.is_empty()).collect();
        insert(&mut root, &path, s);
    }
    root
}
