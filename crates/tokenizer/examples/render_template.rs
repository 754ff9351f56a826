//! Renders a Jinja chat template over a list of cases, one JSON result per line, for comparing
//! against Python/HF: `cargo run --release --example render_template -- TEMPLATE CASES.json`
//! where CASES.json is `[{"messages": [...], "tools": [...]|null, "add_generation_prompt": bool,
//! "extra": {...}}]`.

use autoglm_tokenizer::{ChatMessage, ChatTemplate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(template), Some(cases)) = (args.next(), args.next()) else {
        return Err("usage: render_template TEMPLATE CASES.json".into());
    };
    let source = std::fs::read_to_string(template)?;
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(cases)?)?;
    let tmpl = ChatTemplate::new(&source, "<s>", "</s>")?;
    for case in cases {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone())?;
        let tools = case.get("tools").filter(|t| !t.is_null());
        let add = case["add_generation_prompt"].as_bool().unwrap_or(true);
        let extra = case
            .get("extra")
            .and_then(|e| e.as_object())
            .cloned()
            .unwrap_or_default();
        let result = match tmpl.render_with(&messages, tools, add, &extra) {
            Ok(text) => serde_json::json!({ "ok": text }),
            Err(e) => serde_json::json!({ "err": e.to_string() }),
        };
        println!("{result}");
    }
    Ok(())
}
