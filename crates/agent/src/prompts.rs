//! What the agent asks the model, and the shapes of the answers: plan and reflection schemas
//! (constrained backends make them parse by construction; others are read tolerantly), the
//! prompts for planning, executing a step, reflecting and composing the final answer.

use serde_json::{Value, json};

use crate::memory::shorten;

/// Most of one step's result quoted to later steps and to the final answer (head and tail):
/// a step that read a whole file must not crowd the others out of the context.
const RESULT_BYTES: usize = 2000;

/// One subtask of a plan; ids are 1-based positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Subtask {
    pub id: usize,
    pub task: String,
    pub depends_on: Vec<usize>,
}

pub(crate) fn plan_schema(max_steps: usize) -> Value {
    json!({"type": "object", "properties": {
        "steps": {"type": "array", "minItems": 1, "maxItems": max_steps, "items": {
            "type": "object", "properties": {
                "task": {"type": "string", "minLength": 3, "maxLength": 200},
                "depends_on": {"type": "array", "maxItems": max_steps,
                               "items": {"type": "integer", "minimum": 1, "maximum": max_steps}}},
            "required": ["task", "depends_on"], "additionalProperties": false}}},
        "required": ["steps"], "additionalProperties": false})
}

pub(crate) fn reflection_schema() -> Value {
    json!({"type": "object", "properties": {
        "ok": {"type": "boolean"},
        "reason": {"type": "string", "maxLength": 200}},
        "required": ["ok", "reason"], "additionalProperties": false})
}

/// The first JSON object in `text` (models behind other servers wrap JSON in prose or code
/// fences).
pub(crate) fn extract_json(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return Ok(v);
    }
    let start = t.find('{').ok_or("no JSON object in the reply")?;
    let mut values = serde_json::Deserializer::from_str(&t[start..]).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("the JSON in the reply does not parse: {e}")),
        None => Err("no JSON object in the reply".into()),
    }
}

/// A plan from the planner's JSON. Dependencies on missing or later steps are dropped, so the
/// plan is always acyclic and runnable.
pub(crate) fn parse_plan(v: &Value, max_steps: usize) -> Result<Vec<Subtask>, String> {
    let steps = v
        .get("steps")
        .and_then(Value::as_array)
        .ok_or("the plan needs a \"steps\" list")?;
    if steps.is_empty() {
        return Err("the plan has no steps".into());
    }
    let mut out = Vec::new();
    for (i, s) in steps.iter().take(max_steps).enumerate() {
        let task = s
            .get("task")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("step {} has no \"task\" text", i + 1))?;
        let id = i + 1;
        let mut deps: Vec<usize> = s
            .get("depends_on")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .map(|d| d as usize)
            .filter(|&d| d >= 1 && d < id)
            .collect();
        deps.sort_unstable();
        deps.dedup();
        out.push(Subtask {
            id,
            task: task.to_string(),
            depends_on: deps,
        });
    }
    Ok(out)
}

pub(crate) fn parse_reflection(v: &Value) -> Result<(bool, String), String> {
    let ok = v
        .get("ok")
        .and_then(Value::as_bool)
        .ok_or("the check needs \"ok\": true or false")?;
    let reason = v
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok((ok, reason))
}

pub(crate) fn planner_system(max_steps: usize) -> String {
    format!(
        "You plan tasks for an assistant that can use tools. Break the user's goal into at most \
         {max_steps} short steps, in order. Each step says what to do; \"depends_on\" lists the \
         numbers of earlier steps whose results it needs. A simple goal is a single step. \
         Answer with JSON only."
    )
}

pub(crate) fn planner_user(goal: &str, memories: &[String], feedback: Option<&str>) -> String {
    let mut s = format!("Goal: {goal}");
    if !memories.is_empty() {
        s.push_str("\nThings known from before:");
        for m in memories {
            s.push_str("\n- ");
            s.push_str(m);
        }
    }
    if let Some(f) = feedback {
        s.push_str("\nThe previous plan did not work: ");
        s.push_str(f);
        s.push_str("\nMake a new plan for what is left.");
    }
    s
}

pub(crate) fn executor_system(tool_names: &[String]) -> String {
    if tool_names.is_empty() {
        "You carry out one step of a larger task. Reply with the result of the step.".into()
    } else {
        format!(
            "You carry out one step of a larger task. You can use these tools: {}. Call a tool \
             when it helps; when you have the result of the step, reply with it in plain text.",
            tool_names.join(", ")
        )
    }
}

pub(crate) fn executor_user(goal: &str, step: &str, earlier: &[(String, String)]) -> String {
    let mut s = format!("Overall goal: {goal}\nThis step: {step}");
    if !earlier.is_empty() {
        s.push_str("\nResults of earlier steps:");
        for (task, result) in earlier {
            s.push_str(&format!("\n- {task}: {}", shorten(result, RESULT_BYTES)));
        }
    }
    s
}

pub(crate) fn reflection_user(goal: &str, step: &str, result: &str) -> String {
    format!(
        "Goal: {goal}\nStep: {step}\nResult: {result}\nDoes the result accomplish the step? \
         Answer with JSON: {{\"ok\": true or false, \"reason\": \"...\"}}."
    )
}

pub(crate) fn final_user(goal: &str, results: &[(String, String)]) -> String {
    let mut s = format!("Goal: {goal}\nResults of the steps:");
    for (task, result) in results {
        s.push_str(&format!("\n- {task}: {}", shorten(result, RESULT_BYTES)));
    }
    s.push_str("\nWrite the final answer to the goal.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_read_tolerantly_and_made_acyclic() {
        let v = extract_json("Sure! Here is the plan:\n```json\n{\"steps\": [{\"task\": \"add\", \"depends_on\": []}, {\"task\": \"double it\", \"depends_on\": [1, 2, 7]}]}\n```").unwrap();
        let p = parse_plan(&v, 4).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].depends_on, vec![1]);
        assert!(parse_plan(&json!({"steps": []}), 4).is_err());
        assert!(parse_plan(&json!({"plan": 1}), 4).is_err());
        assert!(parse_plan(&json!({"steps": [{"task": " "}]}), 4).is_err());
        assert!(extract_json("no json here").is_err());
        assert!(extract_json("{\"a\": ").is_err());
        let many = json!({"steps": (0..9).map(|i| json!({"task": format!("t{i}"), "depends_on": []})).collect::<Vec<_>>()});
        assert_eq!(parse_plan(&many, 4).unwrap().len(), 4);
    }

    #[test]
    fn reflections_need_a_verdict() {
        assert_eq!(
            parse_reflection(&json!({"ok": false, "reason": "wrong"})).unwrap(),
            (false, "wrong".to_string())
        );
        assert!(parse_reflection(&json!({"reason": "?"})).is_err());
    }
}
