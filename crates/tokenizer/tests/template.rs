//! Chat-template rendering: the SmolLM2 template against llama.cpp's byte-exact recordings,
//! plus the HF-compatibility features other templates rely on.

mod common;

use autoglm_tokenizer::{ChatMessage, ChatTemplate, TokenizerError};
use common::*;
use serde_json::json;

fn render(src: &str, messages: &[ChatMessage], tools: Option<&serde_json::Value>) -> String {
    ChatTemplate::new(src, "<s>", "</s>")
        .expect("template compiles")
        .render(messages, tools, true)
        .unwrap_or_else(|e| panic!("render failed: {e}"))
}

/// `check(template, expected)` with one user message "hi".
fn check(src: &str, expect: &str) {
    assert_eq!(
        render(src, &[ChatMessage::user("hi")], None),
        expect,
        "template {src:?}"
    );
}

#[test]
fn smollm_template_matches_reference_byte_for_byte() {
    let m = smollm();
    let tmpl = ChatTemplate::from_gguf(&m.file, &m.tok)
        .expect("template loads")
        .expect("SmolLM2 has a chat template");
    let lines = reference("smollm2-135m", "template.jsonl");
    assert!(!lines.is_empty());
    let mut failures = Vec::new();
    for line in &lines {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(line["messages"].clone()).expect("messages");
        let want = line["rendered"].as_str().expect("rendered");
        let got = tmpl.render(&messages, None, true).expect("renders");
        if got != want {
            failures.push(format!("want {want:?}\ngot  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("smollm2-135m: {} templates match", lines.len());
}

#[test]
fn gemma_has_no_template() {
    let g = gemma();
    assert!(
        ChatTemplate::from_gguf(&g.file, &g.tok)
            .expect("ok")
            .is_none()
    );
}

#[test]
fn hf_environment_settings() {
    // trim_blocks + lstrip_blocks: block tags leave no whitespace behind.
    check(
        "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}",
        "[hi]\n",
    );
    // keep_trailing_newline off.
    check("{{ messages[0].content }}\n", "hi");
    // Variables.
    check(
        "{{ bos_token }}{{ eos_token }}{{ add_generation_prompt }}{{ tools }}{{ none }}",
        "<s></s>TrueNone",
    );
    // Without tools, `tools` is undefined (as in llama.cpp).
    check(
        "{% if tools is not defined %}no tools{% endif %}",
        "no tools",
    );
    assert_eq!(
        render(
            "{{ tools | length }} {{ tools is defined }}",
            &[],
            Some(&json!([]))
        ),
        "0 True"
    );
    // Loop controls and namespace().
    check(
        "{% set ns = namespace(n=0) %}{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
        "8",
    );
    // Python string methods.
    check(
        "{{ '  x y  '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'aXa'.replace('X', '-') }}|{{ 'Hi'.upper() }}|{{ messages[0]['content'].endswith('i') }}",
        "x y|True|a+b|a-a|HI|True",
    );
    // Dict methods.
    check(
        "{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}",
        "a=1",
    );
    // strftime_now exists and formats.
    let year = render("{{ strftime_now('%Y') }}", &[], None);
    assert!(year.len() == 4 && year.starts_with('2'), "{year}");
}

#[test]
fn tojson_is_pythons_json_dumps() {
    check(
        r#"{{ {"a": "<b>&'", "n": 1, "f": 1.5, "z": none, "t": true, "u": "é🤖"} | tojson }}"#,
        r#"{"a": "<b>&'", "n": 1, "f": 1.5, "z": null, "t": true, "u": "é🤖"}"#,
    );
    check(
        r#"{{ [1, [2, {}], []] | tojson(indent=2) }}"#,
        "[\n  1,\n  [\n    2,\n    {}\n  ],\n  []\n]",
    );
    check(
        r#"{{ "é\n\"" | tojson(ensure_ascii=true) }}"#,
        r#""\u00e9\n\"""#,
    );
    check(
        r#"{{ {"b": 1, "a": 2} | tojson(sort_keys=true) }}"#,
        r#"{"a": 2, "b": 1}"#,
    );
    check(
        r#"{{ {"b": 1, "a": [1, 2]} | tojson(separators=(",", ":")) }}"#,
        r#"{"b":1,"a":[1,2]}"#,
    );
}

#[test]
fn tools_reach_the_template_in_order() {
    let tools = json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city <now>",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }
    }]);
    let src = "{% if tools %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}";
    let got = render(src, &[ChatMessage::user("weather?")], Some(&tools));
    assert_eq!(
        got,
        "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather for a city <now>\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\nuser: weather?\n"
    );
}

#[test]
fn optional_message_fields() {
    let call = ChatMessage {
        tool_calls: Some(json!([{"function": {"name": "f", "arguments": {"x": 1}}}])),
        ..ChatMessage::assistant("")
    };
    let src = "{% for m in messages %}{{ m.role }}{% if m.tool_calls is defined %} calls {{ m.tool_calls[0].function.name }}{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}{% if m.tool_call_id is defined %} for {{ m.tool_call_id }}{% endif %}|{% endfor %}";
    let got = render(
        src,
        &[
            ChatMessage::user("u"),
            call,
            ChatMessage::tool("42", "call_1"),
        ],
        None,
    );
    assert_eq!(got, "user|assistant calls f{\"x\": 1}|tool for call_1|");
}

#[test]
fn template_errors_are_clear() {
    let tmpl = ChatTemplate::new(
        "{% if messages[0].role != 'system' %}{{ raise_exception('Conversations must start with a system message') }}{% endif %}ok",
        "",
        "",
    )
    .expect("compiles");
    match tmpl.render(&[ChatMessage::user("hi")], None, true) {
        Err(TokenizerError::TemplateException(msg)) => {
            assert_eq!(msg, "Conversations must start with a system message")
        }
        other => panic!("expected TemplateException, got {other:?}"),
    }
    let err = tmpl
        .render(&[ChatMessage::user("hi")], None, true)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "chat template raised an exception: Conversations must start with a system message"
    );
    assert_eq!(
        tmpl.render(&[ChatMessage::system("s")], None, true)
            .expect("renders"),
        "ok"
    );

    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", "", "").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err:?}");
    assert!(text.starts_with("chat template syntax error:"), "{text}");
    assert_eq!(
        text,
        "chat template syntax error: syntax error: unexpected end of input, expected end of block \
         (line 1: {% for m in messages %}{{ m.content }})"
    );

    let err = ChatTemplate::new("{{ 1 + }}", "", "").unwrap_err();
    assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err:?}");

    let tmpl = ChatTemplate::new("{{ messages[0].content.nope() }}", "", "").expect("compiles");
    let err = tmpl
        .render(&[ChatMessage::user("hi")], None, true)
        .unwrap_err();
    assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err:?}");
    eprintln!("render error reads: {err}");
}

/// A template exercising filters, tests, slicing, dict/str methods and every tojson option,
/// rendered over several conversations (with tools and tool calls), must equal what Python's
/// jinja2 with HF's setup produced (`tests/data/hf_render.py`).
#[test]
fn feature_mix_matches_jinja2() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let read = |name: &str| {
        std::fs::read_to_string(data.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let tmpl = ChatTemplate::new(&read("features.jinja"), "<s>", "</s>").expect("compiles");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&read("template_cases.json")).expect("cases");
    let expected: Vec<serde_json::Value> = read("features.expected.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("expected line"))
        .collect();
    assert_eq!(cases.len(), expected.len());
    for (i, (case, want)) in cases.iter().zip(&expected).enumerate() {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        let tools = case.get("tools").filter(|t| !t.is_null());
        let add = case["add_generation_prompt"].as_bool().unwrap_or(true);
        let extra = case
            .get("extra")
            .and_then(|e| e.as_object())
            .cloned()
            .unwrap_or_default();
        let got = tmpl.render_with(&messages, tools, add, &extra);
        match (want.get("ok").and_then(|v| v.as_str()), got) {
            (Some(want), Ok(got)) => assert_eq!(got, want, "case {i}"),
            (None, Err(_)) => {}
            (want, got) => panic!("case {i}: expected {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn builtin_templates_for_models_without_one() {
    let g = gemma();
    let t = ChatTemplate::builtin("gemma3", &g.tok).unwrap();
    let conv = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hi"),
        ChatMessage::assistant("Hello!"),
        ChatMessage::user("Bye"),
    ];
    assert_eq!(
        t.render(&conv, None, true).unwrap(),
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    // The turn markers are single special tokens in Gemma's vocabulary.
    let ids = g.tok.encode("<start_of_turn>user\nHi<end_of_turn>", true);
    assert_eq!(ids.first().copied(), Some(105));
    assert_eq!(ids.last().copied(), Some(106));

    let t = ChatTemplate::builtin("llama", &smollm().tok).unwrap();
    assert_eq!(
        t.render(&[ChatMessage::user("Hi")], None, true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}
