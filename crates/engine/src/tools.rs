//! Tool calling for models that were never taught it: how tools are described in the prompt,
//! the grammar that makes the model's tool calls valid by construction, and how calls are read
//! back out of the generated text.
//!
//! The format is the widespread Hermes/Qwen one: `<tool_call>\n{"name": …, "arguments": {…}}\n
//! </tool_call>`. The grammar pins `name` to a declared tool and `arguments` to that tool's JSON
//! Schema, so with `tool_choice` required or named even a 135M model produces calls that parse and
//! validate; with `auto` the model may instead answer in plain text (which then cannot start with
//! `<`, so the two are told apart by the first token).
//!
//! Templates that do not know tools (neither catalogue model's does) get the tool list in the
//! system message, earlier calls written back in the same format, and tool results as user turns
//! wrapped in `<tool_response>`, so any turn-alternation rule of the template still holds.

use autoglm_tokenizer::ChatMessage;
use serde_json::{Value, json};

use crate::{EngineError, Grammar};

pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Around each tool result shown to the model.
pub const TOOL_RESPONSE_OPEN: &str = "<tool_response>";
pub const TOOL_RESPONSE_CLOSE: &str = "</tool_response>";

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// OpenAI's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Answer in text; tools are still described.
    None,
    /// Text or tool calls, the model's choice.
    Auto,
    /// At least one tool call.
    Required,
    /// Exactly one call of this tool.
    Named(String),
}

/// A tool call read from generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolSpec {
    /// The arguments schema, defaulting to "no arguments" when none was declared: an open
    /// object would let a small model invent keys without end.
    fn arguments_schema(&self) -> Value {
        if self.parameters.is_null() {
            json!({"type": "object", "properties": {}, "additionalProperties": false})
        } else {
            self.parameters.clone()
        }
    }

    /// What the grammar generates: the arguments schema with undeclared keys closed off (see
    /// [`close_objects`]).
    fn generated_arguments_schema(&self) -> Value {
        let mut s = self.arguments_schema();
        close_objects(&mut s);
        s
    }

    fn call_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": self.name},
                "arguments": self.generated_arguments_schema(),
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    }
}

/// Sets `additionalProperties: false` on every object schema that lists `properties` and says
/// nothing about other keys. JSON Schema allows undeclared keys by default, and a small model
/// given that freedom invents keys and nests them until the token budget runs out; the calls
/// generated this way are still valid under the caller's schema, only narrower.
pub fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            if o.contains_key("properties")
                && !o.contains_key("additionalProperties")
                && !o.contains_key("patternProperties")
                && !o.contains_key("unevaluatedProperties")
            {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (k, v) in o.iter_mut() {
                match k.as_str() {
                    // Maps of name -> schema.
                    "properties" | "$defs" | "definitions" | "patternProperties" => {
                        if let Value::Object(m) = v {
                            m.values_mut().for_each(close_objects);
                        }
                    }
                    // A schema, or a list of schemas.
                    "items"
                    | "prefixItems"
                    | "anyOf"
                    | "oneOf"
                    | "allOf"
                    | "not"
                    | "if"
                    | "then"
                    | "else"
                    | "additionalProperties"
                    | "contains" => match v {
                        Value::Array(a) => a.iter_mut().for_each(close_objects),
                        v => close_objects(v),
                    },
                    _ => {}
                }
            }
        }
        Value::Array(_) | Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

/// Checks names and schemas before anything is compiled, so errors name the tool.
pub fn validate_tools(tools: &[ToolSpec], choice: &ToolChoice) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Constraint(m));
    for (i, t) in tools.iter().enumerate() {
        if t.name.is_empty()
            || !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return bad(format!(
                "tools[{i}]: the name {:?} must be non-empty letters, digits, _ - or .",
                t.name
            ));
        }
        if tools[..i].iter().any(|u| u.name == t.name) {
            return bad(format!("tools[{i}]: the name {:?} is used twice", t.name));
        }
        if !t.parameters.is_null() && !t.parameters.is_object() {
            return bad(format!(
                "tools[{i}] ({}): parameters must be a JSON Schema object",
                t.name
            ));
        }
    }
    match choice {
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => bad(format!(
            "tool_choice names {n:?}, which is not among the tools"
        )),
        ToolChoice::Required | ToolChoice::Named(_) if tools.is_empty() => {
            bad("tool_choice requires a tool call, but no tools were given".into())
        }
        _ => Ok(()),
    }
}

/// The grammar for the model's answer: tool calls as `choice` allows, and where a plain answer
/// is allowed, free text or, given `answer_schema`, JSON matching it. `None` when the answer is
/// unconstrained free text.
pub fn answer_grammar(
    tools: &[ToolSpec],
    choice: &ToolChoice,
    parallel: bool,
    answer_schema: Option<&Value>,
) -> Option<Grammar> {
    let chosen: Vec<&ToolSpec> = match choice {
        ToolChoice::None => return answer_schema.map(|s| Grammar::JsonSchema(s.clone())),
        ToolChoice::Auto if tools.is_empty() => {
            return answer_schema.map(|s| Grammar::JsonSchema(s.clone()));
        }
        _ if tools.is_empty() => return None,
        ToolChoice::Named(n) => tools.iter().filter(|t| &t.name == n).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    let schema = if chosen.len() == 1 {
        chosen[0].call_schema()
    } else {
        json!({"anyOf": chosen.iter().map(|t| t.call_schema()).collect::<Vec<_>>()})
    };
    let schema = crate::constraint::with_json_options(&schema);
    // A named tool is called once, as OpenAI does; otherwise calls may follow each other.
    let calls = if parallel && !matches!(choice, ToolChoice::Named(_)) {
        "call (\"\\n\" call)*"
    } else {
        "call"
    };
    // A plain answer may not start with `<`, so the first token tells the two apart.
    let (start, answer) = match (choice, answer_schema) {
        (ToolChoice::Auto, None) => ("TEXT | calls", String::new()),
        (ToolChoice::Auto, Some(a)) => (
            "answer | calls",
            format!(
                "answer: %json {}\n",
                crate::constraint::with_json_options(a)
            ),
        ),
        _ => ("calls", String::new()),
    };
    Some(Grammar::Lark(format!(
        "start: {start}\n\
         calls: {calls}\n\
         call: {open:?} arguments {close:?}\n\
         arguments: %json {schema}\n\
         {answer}\
         TEXT: /[^<](.|\\n)*/\n",
        open = format!("{TOOL_CALL_OPEN}\n"),
        close = format!("\n{TOOL_CALL_CLOSE}"),
    )))
}

/// The system-prompt section describing `tools` and the call format.
pub fn tools_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "You can call functions. These are available, one JSON signature per line:\n<tools>\n",
    );
    for t in tools {
        let mut f = json!({"name": t.name, "parameters": t.arguments_schema()});
        if let Some(d) = &t.description {
            f["description"] = json!(d);
        }
        s.push_str(&json!({"type": "function", "function": f}).to_string());
        s.push('\n');
    }
    s.push_str(
        "</tools>\nTo call a function, answer with its name and arguments as JSON inside tags:\n\
         <tool_call>\n{\"name\": <function-name>, \"arguments\": <arguments-object>}\n</tool_call>",
    );
    s
}

/// Rewrites a conversation for a template that does not know tools: the tool list joins the
/// system message, earlier calls become text in the call format, tool results become user
/// turns, and consecutive turns of one role are merged.
pub fn messages_with_tools(messages: &[ChatMessage], tools: &[ToolSpec]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    if !tools.is_empty() {
        let section = tools_prompt(tools);
        match messages.first() {
            Some(m) if m.role == "system" => {
                out.push(ChatMessage::system(format!("{}\n\n{section}", m.content)))
            }
            _ => out.push(ChatMessage::system(section)),
        }
    }
    let skip =
        usize::from(!tools.is_empty() && messages.first().is_some_and(|m| m.role == "system"));
    for m in &messages[skip..] {
        let (role, content) = match m.role.as_str() {
            "assistant" => {
                let mut c = m.content.clone();
                for call in m.tool_calls.iter().flat_map(openai_calls) {
                    if !c.is_empty() {
                        c.push('\n');
                    }
                    c.push_str(&format_call(&call));
                }
                ("assistant", c)
            }
            "tool" => (
                "user",
                format!("{TOOL_RESPONSE_OPEN}\n{}\n{TOOL_RESPONSE_CLOSE}", m.content),
            ),
            r => (r, m.content.clone()),
        };
        match out.last_mut() {
            Some(prev) if prev.role == role && role != "system" => {
                prev.content.push('\n');
                prev.content.push_str(&content);
            }
            _ => out.push(ChatMessage::new(role, content)),
        }
    }
    out
}

/// Calls in OpenAI's message shape (`[{"function": {"name", "arguments": "<json text>"}}]`).
fn openai_calls(v: &Value) -> Vec<ToolCall> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let f = c.get("function")?;
            let name = f.get("name")?.as_str()?.to_string();
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                }
                Some(v) => v.clone(),
                None => json!({}),
            };
            Some(ToolCall { name, arguments })
        })
        .collect()
}

/// One call in the prompt format (the same layout the grammar produces).
pub fn format_call(call: &ToolCall) -> String {
    let body = json!({"name": call.name, "arguments": call.arguments});
    format!(
        "{TOOL_CALL_OPEN}\n{}\n{TOOL_CALL_CLOSE}",
        crate::constraint::compact_json(&body)
    )
}

/// Generated text split into its plain-text part and its tool calls. A block that does not
/// parse stays in the text (only possible without the grammar, or when cut off by max_tokens).
pub fn parse_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(TOOL_CALL_OPEN) {
        let body_start = at + TOOL_CALL_OPEN.len();
        // Read exactly one JSON value, so a closing tag inside a string cannot end the call.
        match read_call(&rest[body_start..]) {
            Some((call, used)) => {
                content.push_str(&rest[..at]);
                calls.push(call);
                rest = &rest[body_start + used..];
            }
            None => {
                // Not a call: keep the text up to and including the tag and look further on.
                content.push_str(&rest[..body_start]);
                rest = &rest[body_start..];
            }
        }
    }
    content.push_str(rest);
    // The tool results the model was shown are wrapped in these tags, and small models echo
    // them after repeating a result ("391\n</tool_response>"); they are never an answer's text.
    for tag in [TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE] {
        content = content.replace(tag, "");
    }
    (content.trim().to_string(), calls)
}

/// A call at the start of `s` (after the opening tag): one JSON object with a name, then the
/// closing tag. Returns the call and the bytes used, closing tag included.
fn read_call(s: &str) -> Option<(ToolCall, usize)> {
    let mut values = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    let v = values.next()?.ok()?;
    let after_json = values.byte_offset();
    let tail = &s[after_json..];
    let trimmed = tail.trim_start();
    if !trimmed.starts_with(TOOL_CALL_CLOSE) {
        return None;
    }
    let used = after_json + (tail.len() - trimmed.len()) + TOOL_CALL_CLOSE.len();
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    Some((ToolCall { name, arguments }, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: Some("Current weather".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}),
        }
    }

    #[test]
    fn calls_are_parsed_out_of_text() {
        let check = |text: &str, content: &str, names: &[&str]| {
            let (c, calls) = parse_tool_calls(text);
            assert_eq!(c, content, "{text}");
            assert_eq!(
                calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                names,
                "{text}"
            );
        };
        check("plain answer", "plain answer", &[]);
        // Echoed result tags are dropped.
        check("391\n</tool_response>", "391", &[]);
        check("<tool_response>\n42\n</tool_response>", "42", &[]);
        check(
            "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\": 1}}\n</tool_call>",
            "",
            &["a"],
        );
        check(
            "Let me look.\n<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n\
             <tool_call>{\"name\": \"b\", \"parameters\": {}}</tool_call>",
            "Let me look.",
            &["a", "b"],
        );
        // Broken or unterminated blocks stay text.
        check(
            "<tool_call>{oops}</tool_call>",
            "<tool_call>{oops}</tool_call>",
            &[],
        );
        check(
            "<tool_call>{\"name\": \"a\"",
            "<tool_call>{\"name\": \"a\"",
            &[],
        );
        // A closing tag inside a string argument does not end the call.
        let (c, calls) = parse_tool_calls(
            "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"e\": \"1}}</tool_call> x\"}}\n</tool_call>",
        );
        assert_eq!((c.as_str(), calls.len()), ("", 1));
        assert_eq!(calls[0].arguments, json!({"e": "1}}</tool_call> x"}));
        let (_, calls) = parse_tool_calls(&format_call(&ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        }));
        assert_eq!(calls[0].arguments, json!({"city": "Paris"}));
    }

    #[test]
    fn conversation_is_rewritten_for_templates_without_tools() {
        let mut call = ChatMessage::assistant("");
        call.tool_calls = Some(json!([{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]));
        let msgs = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Weather in Oslo?"),
            call,
            ChatMessage::tool("{\"temp\": 3}", "c1"),
            ChatMessage::tool("{\"wind\": 10}", "c2"),
        ];
        let out = messages_with_tools(&msgs, &[weather()]);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            out[0]
                .content
                .starts_with("Be brief.\n\nYou can call functions.")
        );
        assert!(out[0].content.contains("\"name\":\"get_weather\""));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n{\"temp\": 3}\n</tool_response>\n<tool_response>\n{\"wind\": 10}\n</tool_response>"
        );
    }

    #[test]
    fn only_declared_keys_are_generated() {
        let mut s = json!({"type": "object", "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "b": {"type": "array", "items": {"properties": {"y": {}}}},
            "c": {"type": "object"},
            "d": {"anyOf": [{"properties": {}}, {"type": "null"}]},
            "e": {"properties": {}, "additionalProperties": true}},
            "$defs": {"t": {"properties": {"z": {}}}}});
        close_objects(&mut s);
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(s["properties"]["a"]["additionalProperties"], json!(false));
        assert_eq!(
            s["properties"]["b"]["items"]["additionalProperties"],
            json!(false)
        );
        // A free-form object stays free; an explicit choice is kept.
        assert_eq!(s["properties"]["c"].get("additionalProperties"), None);
        assert_eq!(
            s["properties"]["d"]["anyOf"][0]["additionalProperties"],
            json!(false)
        );
        assert_eq!(s["properties"]["e"]["additionalProperties"], json!(true));
        assert_eq!(s["$defs"]["t"]["additionalProperties"], json!(false));
    }

    #[test]
    fn tools_and_choice_are_validated() {
        let check = |tools: Vec<ToolSpec>, choice: ToolChoice, expect: Option<&str>| {
            let r = validate_tools(&tools, &choice);
            match expect {
                None => assert!(r.is_ok(), "{r:?}"),
                Some(e) => assert!(r.unwrap_err().to_string().contains(e)),
            }
        };
        check(vec![weather()], ToolChoice::Auto, None);
        check(
            vec![weather()],
            ToolChoice::Named("get_weather".into()),
            None,
        );
        check(
            vec![weather()],
            ToolChoice::Named("nope".into()),
            Some("not among"),
        );
        check(vec![], ToolChoice::Required, Some("no tools"));
        check(
            vec![weather(), weather()],
            ToolChoice::Auto,
            Some("used twice"),
        );
        let mut bad = weather();
        bad.name = "has space".into();
        check(vec![bad], ToolChoice::Auto, Some("must be non-empty"));
        let mut bad = weather();
        bad.parameters = json!("string");
        check(vec![bad], ToolChoice::Auto, Some("JSON Schema object"));
        assert_eq!(
            answer_grammar(&[weather()], &ToolChoice::None, true, None),
            None
        );
        assert_eq!(answer_grammar(&[], &ToolChoice::Auto, true, None), None);
        let schema = json!({"type": "object"});
        assert_eq!(
            answer_grammar(&[weather()], &ToolChoice::None, true, Some(&schema)),
            Some(Grammar::JsonSchema(schema.clone()))
        );
        let Some(Grammar::Lark(g)) =
            answer_grammar(&[weather()], &ToolChoice::Auto, true, Some(&schema))
        else {
            panic!("a Lark grammar")
        };
        assert!(g.starts_with("start: answer | calls\n"), "{g}");
    }
}
