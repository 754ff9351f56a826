//! A chat turn made ready for the engine: the conversation rewritten for tools if needed,
//! rendered with the model's template, tokenised, and the grammar its answer must follow. The
//! HTTP server and the in-process agent client both go through here, so a model sees the same
//! prompt and grammar whichever way it is reached.

use autoglm_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use serde_json::Value;

use crate::{
    EngineError, Grammar, ToolChoice, ToolSpec, answer_grammar, messages_with_tools, prompt_tokens,
};

/// What the caller asks of one chat turn.
#[derive(Debug, Clone, Copy)]
pub struct ChatTurn<'a> {
    pub messages: &'a [ChatMessage],
    pub tools: &'a [ToolSpec],
    pub tool_choice: &'a ToolChoice,
    /// More than one call in one answer.
    pub parallel_tool_calls: bool,
    /// A plain answer must be JSON matching this schema.
    pub answer_schema: Option<&'a Value>,
}

/// The engine's side of the turn.
#[derive(Debug, Clone)]
pub struct PreparedChat {
    pub prompt: Vec<u32>,
    pub grammar: Option<Grammar>,
    /// The answer may contain tool calls to read out with [`crate::parse_tool_calls`].
    pub expects_tool_calls: bool,
}

/// Renders `turn`. Template errors (a template's own `raise_exception`, say) come back as
/// [`EngineError::Tokenizer`].
pub fn prepare_chat(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    turn: ChatTurn<'_>,
) -> Result<PreparedChat, EngineError> {
    crate::validate_tools(turn.tools, turn.tool_choice)?;
    // Neither catalogue template knows tools: describe them in the system message and write
    // earlier calls and results in the format the grammar produces.
    let rewritten;
    let messages = if !turn.tools.is_empty()
        || turn
            .messages
            .iter()
            .any(|m| m.role == "tool" || m.tool_calls.is_some())
    {
        rewritten = messages_with_tools(turn.messages, turn.tools);
        &rewritten
    } else {
        turn.messages
    };
    let text = template.render(messages, None, true)?;
    Ok(PreparedChat {
        prompt: prompt_tokens(tokenizer, &text),
        grammar: answer_grammar(
            turn.tools,
            turn.tool_choice,
            turn.parallel_tool_calls,
            turn.answer_schema,
        ),
        expects_tool_calls: !turn.tools.is_empty() && *turn.tool_choice != ToolChoice::None,
    })
}
