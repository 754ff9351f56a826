//! Working memory: the conversation one step sends to the model, kept within the context budget.
//!
//! A step's conversation is a stable prefix (the system prompt with the tool list, then the
//! step's own message) followed by rounds: the model's tool calls and their results. The prefix
//! never changes while the step runs, so the engine's prefix cache serves it on every round.
//! When the rounds outgrow the budget, the oldest whole rounds are *compacted*: replaced by one
//! line per call (tool, arguments, the head of its result) appended to the step's message, never
//! cut in the middle of a round, so every tool call still has its result. If the newest round
//! alone is too large, its results are shortened to head and tail.
//!
//! Compaction is a pure function of the journaled results, so a resumed run rebuilds exactly
//! the conversation the interrupted one had.

use autoglm_llm::{Message, Role};

/// Tokens a text may take, on the safe side: byte-level BPE averages about four bytes a token
/// on English and two to three on code and numbers; three keeps code-heavy tool output inside
/// the budget.
pub(crate) fn approx_tokens(text: &str) -> usize {
    text.len() / 3 + 1
}

/// What one message costs in a chat template: its text, its tool calls, and a few tokens of role
/// markup.
fn message_tokens(m: &Message) -> usize {
    let calls: usize = m
        .tool_calls
        .iter()
        .map(|c| approx_tokens(&c.name) + approx_tokens(&c.arguments.to_string()))
        .sum();
    approx_tokens(&m.content) + calls + 4
}

pub(crate) fn conversation_tokens(messages: &[Message]) -> usize {
    messages.iter().map(message_tokens).sum()
}

/// Longest part of a result kept in a compacted round's line.
const NOTE_CHARS: usize = 240;

/// Head and tail of `text`, at most `max` bytes in all, cut at character boundaries.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let marker = " […] ";
    let keep = max.saturating_sub(marker.len());
    let mut head = keep * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (keep - head);
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{marker}{}", &text[..head], &text[tail..])
}

fn one_line(text: &str, max: usize) -> String {
    shorten(&text.split_whitespace().collect::<Vec<_>>().join(" "), max)
}

/// A step's conversation: `prefix` messages that never change, then rounds.
pub(crate) struct Window {
    budget: usize,
    prefix: Vec<Message>,
    /// Lines for compacted rounds, appended to the last prefix message.
    notes: Vec<String>,
    /// Compacted rounds whose lines were dropped too.
    omitted: usize,
    /// Each round: the assistant's message with its calls, then one result per call.
    rounds: Vec<Vec<Message>>,
}

impl Window {
    /// `prefix` is the system prompt and the step's message; `budget` is in tokens.
    pub(crate) fn new(prefix: Vec<Message>, budget: usize) -> Window {
        Window {
            budget,
            prefix,
            notes: Vec::new(),
            omitted: 0,
            rounds: Vec::new(),
        }
    }

    /// Adds a round (the assistant's calls and their results), compacting older ones as needed.
    pub(crate) fn push_round(&mut self, round: Vec<Message>) {
        self.rounds.push(round);
        while self.rounds.len() > 1 && self.over() > 0 {
            let old = self.rounds.remove(0);
            self.notes.push(note(&old));
        }
        // The notes may take half the budget; past it the oldest go, and a count says so.
        let note_tokens =
            |notes: &[String]| -> usize { notes.iter().map(|n| approx_tokens(n) + 1).sum() };
        while self.notes.len() > 1 && note_tokens(&self.notes) > self.budget / 2 {
            self.notes.remove(0);
            self.omitted += 1;
        }
        let over = self.over();
        if over > 0
            && let Some(last) = self.rounds.last_mut()
        {
            // Only results can shrink; share the excess between them by size.
            let results: Vec<usize> = (0..last.len())
                .filter(|&i| last[i].role == Role::Tool)
                .collect();
            let total: usize = results.iter().map(|&i| last[i].content.len()).sum();
            let cut = over * 3 + 16 * results.len();
            for i in results {
                let len = last[i].content.len();
                let share = cut * len / total.max(1) + 1;
                last[i].content = shorten(&last[i].content, len.saturating_sub(share).max(64));
            }
        }
    }

    fn over(&self) -> usize {
        conversation_tokens(&self.messages()).saturating_sub(self.budget)
    }

    /// The conversation to send.
    pub(crate) fn messages(&self) -> Vec<Message> {
        let mut out = self.prefix.clone();
        if !self.notes.is_empty()
            && let Some(last) = out.last_mut()
        {
            last.content
                .push_str("\nWhat you did earlier in this step:");
            if self.omitted > 0 {
                let n = self.omitted;
                last.content
                    .push_str(&format!("\n- ({n} earlier rounds not shown)"));
            }
            for n in &self.notes {
                last.content.push_str("\n- ");
                last.content.push_str(n);
            }
        }
        out.extend(self.rounds.iter().flatten().cloned());
        out
    }
}

/// One line per call of a round: `tool {arguments} -> head of the result`.
fn note(round: &[Message]) -> String {
    let mut lines = Vec::new();
    for m in round.iter().filter(|m| m.role == Role::Assistant) {
        for c in &m.tool_calls {
            let result = round
                .iter()
                .find(|r| r.role == Role::Tool && r.tool_call_id.as_deref() == Some(&c.id))
                .map_or("(no result)", |r| r.content.as_str());
            lines.push(format!(
                "called {} {} -> {}",
                c.name,
                one_line(&c.arguments.to_string(), NOTE_CHARS / 2),
                one_line(result, NOTE_CHARS)
            ));
        }
    }
    lines.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use autoglm_llm::ToolCall;
    use serde_json::json;

    fn round(i: usize, result: &str) -> Vec<Message> {
        let id = format!("call_{i}");
        vec![
            Message::assistant_calls(
                "",
                vec![ToolCall {
                    id: id.clone(),
                    name: "read_file".into(),
                    arguments: json!({"path": format!("part{i}.txt")}),
                }],
            ),
            Message::tool_result(id, result),
        ]
    }

    #[test]
    fn shorten_keeps_head_and_tail_on_char_boundaries() {
        let check = |text: &str, max: usize, expect: &str| assert_eq!(shorten(text, max), expect);
        check("short", 10, "short");
        check("abcdefghijklmnopqrstuvwxyz", 16, "abcdef […] xyz");
        check("ééééééééééééééééé", 16, "ééé […] é");
        for max in 0..40 {
            assert!(shorten(&"é".repeat(30), max).len() <= max.max(8) + 2);
        }
    }

    #[test]
    fn old_rounds_are_compacted_whole_and_the_prefix_stays() {
        let prefix = vec![
            Message::system("You carry out one step."),
            Message::user("This step: read the parts"),
        ];
        let mut w = Window::new(prefix.clone(), 400);
        for i in 0..6 {
            w.push_round(round(
                i,
                &format!("part {i}: {}", "lorem ipsum ".repeat(30)),
            ));
            let m = w.messages();
            assert!(
                conversation_tokens(&m) <= 400,
                "round {i}: {}",
                conversation_tokens(&m)
            );
            // The system prompt and the start of the step's message never change.
            assert_eq!(m[0].content, prefix[0].content);
            assert!(m[1].content.starts_with(&prefix[1].content));
            // Every call in the conversation is followed by its result.
            for (j, msg) in m.iter().enumerate() {
                for c in &msg.tool_calls {
                    assert_eq!(m[j + 1].tool_call_id.as_deref(), Some(c.id.as_str()));
                }
            }
        }
        let m = w.messages();
        // The newest round is whole; older ones are lines in the step's message.
        assert!(m.last().unwrap().content.starts_with("part 5: lorem"));
        let notes = &m[1].content;
        assert!(
            notes.contains("called read_file {\"path\":\"part4.txt\"} -> part 4: lorem"),
            "{notes}"
        );
        assert!(
            notes.contains("earlier rounds not shown") && !notes.contains("part0.txt"),
            "{notes}"
        );
        assert!(!notes.contains("part5.txt"), "{notes}");
    }

    #[test]
    fn a_single_huge_result_is_shortened_to_fit() {
        let mut w = Window::new(vec![Message::user("step")], 300);
        w.push_round(round(0, &format!("BEGIN {} END", "x".repeat(10_000))));
        let m = w.messages();
        assert!(
            conversation_tokens(&m) <= 300,
            "{}",
            conversation_tokens(&m)
        );
        let r = &m.last().unwrap().content;
        assert!(
            r.starts_with("BEGIN") && r.ends_with("END") && r.contains("[…]"),
            "{r}"
        );
    }
}
