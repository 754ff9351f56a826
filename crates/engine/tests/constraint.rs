//! Constrained decoding on the default model: JSON Schema, regex and Lark outputs always match,
//! bad grammars are refused with the reason, constrained and free sequences share a batch
//! without changing each other, and 200 sampled tool calls over varied schemas all parse and
//! validate.

use std::time::Instant;

use autoglm_engine::{
    EngineHandle, FinishReason, GenRequest, Grammar, SamplingParams, ServeConfig, ToolChoice,
    ToolSpec, answer_grammar, messages_with_tools, parse_tool_calls, prompt_tokens,
};
use autoglm_model::Model;
use autoglm_testkit::model_path;
use autoglm_tokenizer::{ChatMessage, ChatTemplate};
use serde_json::{Value, json};

struct Fixture {
    h: EngineHandle,
    template: ChatTemplate,
}

fn fixture() -> Fixture {
    let model = Model::load(model_path("smollm2-135m")).expect("model loads");
    let h = EngineHandle::start(
        model,
        ServeConfig {
            threads: 2,
            ..Default::default()
        },
    )
    .expect("engine starts");
    let file = autoglm_gguf::GgufFile::open(model_path("smollm2-135m")).unwrap();
    let template = ChatTemplate::from_gguf(&file, h.tokenizer())
        .unwrap()
        .expect("SmolLM2 has a template");
    Fixture { h, template }
}

impl Fixture {
    fn prompt(&self, msgs: &[ChatMessage]) -> Vec<u32> {
        let text = self.template.render(msgs, None, true).unwrap();
        prompt_tokens(self.h.tokenizer(), &text)
    }

    fn run(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        g: Option<&Grammar>,
    ) -> (String, FinishReason) {
        let mut req = GenRequest::new(prompt, params);
        req.constraint = g.map(|g| self.h.compile(g).expect("grammar compiles"));
        let (text, summary) = self.h.submit(req).unwrap().collect_blocking().unwrap();
        (text, summary.finish)
    }
}

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        seed: Some(seed),
        max_tokens,
        ..SamplingParams::default()
    }
}

fn validate(schema: &Value, v: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[test]
fn json_schema_regex_and_lark_outputs_match() {
    let f = fixture();
    let person = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "languages": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        },
        "required": ["name", "age", "languages"],
        "additionalProperties": false,
    });
    let ask = |q: &str| f.prompt(&[ChatMessage::user(q)]);
    for seed in 0..4 {
        let (text, finish) = f.run(
            ask("Describe a programmer as JSON."),
            sampled(seed, 120),
            Some(&Grammar::JsonSchema(person.clone())),
        );
        assert_eq!(finish, FinishReason::Stop, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        validate(&person, &v).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
    // json_object mode with greedy decoding: any object, ends when it closes.
    let (text, finish) = f.run(
        ask("Give me a JSON object with a colour and its hex code."),
        SamplingParams::greedy(100),
        Some(&Grammar::json_object()),
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v.is_object() && finish == FinishReason::Stop, "{text}");

    let (text, _) = f.run(
        ask("What is a phone number?"),
        sampled(7, 40),
        Some(&Grammar::Regex(r"\+[0-9]{2} [0-9]{3}-[0-9]{4}".into())),
    );
    let re = regex_lite(&text);
    assert!(re, "{text:?}");

    let (text, finish) = f.run(
        ask("Is the sky blue? Answer yes or no."),
        sampled(3, 20),
        Some(&Grammar::Lark("start: \"yes\" | \"no\"".into())),
    );
    assert!(text == "yes" || text == "no", "{text:?}");
    assert_eq!(finish, FinishReason::Stop);
}

/// `\+[0-9]{2} [0-9]{3}-[0-9]{4}` by hand (no regex crate needed for one check).
fn regex_lite(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 12
        && b[0] == b'+'
        && digits(1..3)
        && b[3] == b' '
        && digits(4..7)
        && b[7] == b'-'
        && digits(8..12)
}

#[test]
fn bad_grammars_are_refused_with_the_reason() {
    let f = fixture();
    let check = |g: Grammar, expect: &str| match f.h.compile(&g) {
        Ok(_) => panic!("{g:?} compiled"),
        Err(e) => assert!(e.to_string().contains(expect), "{g:?}: {e}"),
    };
    check(Grammar::JsonSchema(json!("object")), "must be an object");
    check(
        Grammar::JsonSchema(json!({"type": "frobnicate"})),
        "frobnicate",
    );
    check(Grammar::Regex("(unclosed".into()), "");
    check(
        Grammar::Lark("start: undefined_rule".into()),
        "undefined_rule",
    );
}

#[test]
fn constrained_and_free_sequences_share_a_batch() {
    let f = fixture();
    let p = f.prompt(&[ChatMessage::user("Name three colours.")]);
    let (alone, _) = f.run(p.clone(), SamplingParams::greedy(40), None);
    let schema = Grammar::JsonSchema(json!({"type": "object", "properties": {
        "colours": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
        "required": ["colours"], "additionalProperties": false}));
    let mut streams = Vec::new();
    for i in 0..6 {
        let mut req = GenRequest::new(p.clone(), SamplingParams::greedy(40));
        if i % 2 == 0 {
            req.constraint = Some(f.h.compile(&schema).unwrap());
        }
        streams.push(f.h.submit(req).unwrap());
    }
    for (i, s) in streams.into_iter().enumerate() {
        let (text, _) = s.collect_blocking().unwrap();
        if i % 2 == 0 {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v["colours"].is_array(), "{text}");
        } else {
            assert_eq!(text, alone);
        }
    }
}

/// Ten tools with the kinds of argument schemas agents use.
fn tools() -> Vec<ToolSpec> {
    let t = |name: &str, desc: &str, params: Value| ToolSpec {
        name: name.into(),
        description: Some(desc.into()),
        parameters: params,
    };
    vec![
        t(
            "get_weather",
            "Current weather for a city",
            json!({"type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}),
        ),
        t(
            "calculator",
            "Evaluate an arithmetic expression",
            json!({"type": "object",
            "properties": {"expression": {"type": "string", "maxLength": 60}},
            "required": ["expression"], "additionalProperties": false}),
        ),
        t(
            "search_web",
            "Search the web",
            json!({"type": "object",
            "properties": {"query": {"type": "string"}, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["query", "max_results"]}),
        ),
        t(
            "send_email",
            "Send an email",
            json!({"type": "object",
            "properties": {"to": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 1, "maxItems": 3},
                           "subject": {"type": "string", "maxLength": 80}, "urgent": {"type": "boolean"}},
            "required": ["to", "subject", "urgent"], "additionalProperties": false}),
        ),
        t(
            "create_event",
            "Create a calendar event",
            json!({"type": "object",
            "properties": {"title": {"type": "string"}, "start": {"type": "object",
                "properties": {"day": {"type": "integer", "minimum": 1, "maximum": 31},
                               "hour": {"type": "integer", "minimum": 0, "maximum": 23}},
                "required": ["day", "hour"], "additionalProperties": false},
                "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
            "required": ["title", "start"]}),
        ),
        t(
            "set_temperature",
            "Set the thermostat",
            json!({"type": "object",
            "properties": {"degrees": {"type": "number", "minimum": 5, "maximum": 30}},
            "required": ["degrees"], "additionalProperties": false}),
        ),
        t(
            "read_file",
            "Read a file from the workspace",
            json!({"type": "object",
            "properties": {"path": {"type": "string", "pattern": "^[a-z0-9_/]{1,30}\\.(txt|md|csv)$"}},
            "required": ["path"], "additionalProperties": false}),
        ),
        t("get_time", "Current time", Value::Null),
        t(
            "convert_currency",
            "Convert money",
            json!({"type": "object",
            "properties": {"amount": {"type": "number", "exclusiveMinimum": 0},
                           "from": {"type": "string", "enum": ["USD", "EUR", "GBP", "JPY"]},
                           "to": {"type": "string", "enum": ["USD", "EUR", "GBP", "JPY"]}},
            "required": ["amount", "from", "to"], "additionalProperties": false}),
        ),
        t(
            "run_sql",
            "Run a read-only SQL query",
            json!({"type": "object",
            "properties": {"query": {"type": "string", "maxLength": 120}, "limit": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}},
            "required": ["query"]}),
        ),
    ]
}

#[test]
fn two_hundred_tool_calls_parse_and_match_their_schemas() {
    let f = fixture();
    let tools = tools();
    let asks = [
        "What's the weather like in Lisbon?",
        "How much is 17 times 23?",
        "Find me recent news about Rust compilers.",
        "Email Ana that the meeting moved to Friday.",
        "Put lunch with Sam on my calendar for the 12th at noon.",
        "Make the room a bit warmer please.",
        "Show me notes/todo.txt",
        "What time is it?",
        "How many yen is 250 dollars?",
        "How many users signed up last week? The table is users.",
    ];
    let schema_of = |name: &str| {
        tools.iter().find(|t| t.name == name).map(|t| {
            if t.parameters.is_null() {
                json!({"type": "object", "properties": {}, "additionalProperties": false})
            } else {
                t.parameters.clone()
            }
        })
    };
    let t0 = Instant::now();
    let (mut calls, mut bad, mut tokens) = (0, Vec::new(), 0);
    // 200 requests: each question with `required` (any tool) and with its own tool named, twenty
    // sampling seeds each; submitted 40 at a time so they batch.
    let mut jobs = Vec::new();
    for seed in 0..20u64 {
        for (i, ask) in asks.iter().enumerate() {
            let choice = if seed % 2 == 0 {
                ToolChoice::Required
            } else {
                ToolChoice::Named(tools[i].name.clone())
            };
            jobs.push((ask, choice, seed));
        }
    }
    for chunk in jobs.chunks(40) {
        let streams: Vec<_> = chunk
            .iter()
            .map(|(ask, choice, seed)| {
                let msgs = messages_with_tools(&[ChatMessage::user(**ask)], &tools);
                let g = answer_grammar(&tools, choice, false, None).expect("a grammar");
                let mut req = GenRequest::new(f.prompt(&msgs), sampled(*seed, 160));
                req.constraint = Some(f.h.compile(&g).expect("tool grammar compiles"));
                (f.h.submit(req).unwrap(), choice.clone())
            })
            .collect();
        for (s, choice) in streams {
            let (text, summary) = s.collect_blocking().unwrap();
            tokens += summary.completion_tokens;
            let (content, parsed) = parse_tool_calls(&text);
            if parsed.len() != 1 || !content.is_empty() {
                bad.push(format!("{:?} unparsed: {text:?}", summary.finish));
                continue;
            }
            calls += 1;
            let c = &parsed[0];
            if let ToolChoice::Named(n) = &choice {
                assert_eq!(&c.name, n);
            }
            match schema_of(&c.name) {
                None => bad.push(format!("unknown tool {}", c.name)),
                Some(schema) => {
                    if let Err(e) = validate(&schema, &c.arguments) {
                        bad.push(format!("{}: {e}: {text}", c.name));
                    }
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let st = f.h.stats();
    eprintln!(
        "tool calls: {calls} parsed of 200, {} invalid; {tokens} tokens in {secs:.1} s ({:.0} tokens/s); \
         masks: {} tokens, {:.0} us each",
        bad.len(),
        tokens as f64 / secs,
        st.masked_tokens,
        st.mask_seconds * 1e6 / st.masked_tokens.max(1) as f64
    );
    assert!(
        bad.is_empty(),
        "{} bad calls:\n{}",
        bad.len(),
        bad.join("\n")
    );
    assert_eq!(calls, 200);
}

/// The second catalogue model: a SentencePiece vocabulary of 262k tokens (byte tokens, "▁"
/// spaces) behind the same grammar machinery.
#[test]
fn gemma_produces_schema_valid_json() {
    let model = Model::load(model_path("gemma3-270m")).expect("model loads");
    let h = EngineHandle::start(
        model,
        ServeConfig {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let schema = json!({"type": "object", "properties": {
        "animal": {"type": "string", "maxLength": 20},
        "legs": {"type": "integer", "minimum": 0, "maximum": 100},
        "can_fly": {"type": "boolean"}},
        "required": ["animal", "legs", "can_fly"], "additionalProperties": false});
    let t0 = Instant::now();
    let c = h.compile(&Grammar::JsonSchema(schema.clone())).unwrap();
    eprintln!(
        "gemma: first compile (token trie included) {:?}",
        t0.elapsed()
    );
    let text = "<start_of_turn>user\nDescribe a bird as JSON.<end_of_turn>\n<start_of_turn>model\n";
    let mut req = GenRequest::new(
        prompt_tokens(h.tokenizer(), text),
        SamplingParams::greedy(60),
    );
    req.constraint = Some(c);
    let (out, summary) = h.submit(req).unwrap().collect_blocking().unwrap();
    assert_eq!(summary.finish, FinishReason::Stop, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    validate(&schema, &v).unwrap_or_else(|e| panic!("{e}: {out}"));
}
