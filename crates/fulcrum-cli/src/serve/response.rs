//! OpenAI-shaped response bodies of the completion endpoints: whole responses, and the SSE events of a streamed one,
//! for any number of choices.

use super::generation::{Chunk, TokenLogprob, Usage};
use super::{listen, request, Cancel};
use axum::response::sse::Event as SseEvent;
use fulcrum_engine::reasoning::{split_reply, Part, ThinkSplitter};
use fulcrum_engine::tools::{parse_output, ParsedCall, Piece, ToolParser, ToolSyntax};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;

/// A choice's echoed prompt: its text and, when log-probabilities were asked for, its tokens' (the first has none:
/// its log-probability is NaN, written as null).
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// One finished choice of a response.
pub struct Choice {
    pub index: usize,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub reason: &'static str,
}

impl Choice {
    /// Mean log-probability per generated token (what `best_of` ranks by); 0 for an empty choice.
    pub fn mean_logprob(&self) -> f64 {
        if self.logprobs.is_empty() {
            return 0.0;
        }
        self.logprobs
            .iter()
            .map(|l| f64::from(l.logprob))
            .sum::<f64>()
            / self.logprobs.len() as f64
    }
}

/// The usage of a response: completion tokens of every choice, prompt tokens once per prompt.
pub struct Totals {
    /// Per choice index: whether it is the one whose prompt tokens count.
    counts_prompt: Vec<bool>,
    pub usage: Usage,
}

impl Totals {
    /// Totals for choices `0..first_of_prompt.len()`, of which those marked true count their prompt.
    pub fn new(counts_prompt: Vec<bool>) -> Totals {
        Totals {
            counts_prompt,
            usage: Usage::default(),
        }
    }

    /// Adds choice `index`'s usage.
    pub fn add(&mut self, index: usize, u: Usage) {
        self.usage.completion_tokens += u.completion_tokens;
        if self.counts_prompt.get(index).copied().unwrap_or(false) {
            self.usage.prompt_tokens += u.prompt_tokens;
            self.usage.cached_tokens += u.cached_tokens;
        }
    }
}

/// The identity shared by the chunks of one response.
pub struct Ids {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
    /// When the model was offered tools: how its calls are parsed.
    pub tools: Option<Tooling>,
    /// When the model thinks before answering (its template marks `<think>`): whether the prompt opened the thinking.
    pub thinking: Option<bool>,
}

/// How a reply's tool calls are found.
pub struct Tooling {
    /// The syntax the model writes them in.
    pub syntax: ToolSyntax,
    /// Whether several calls may come in one reply (otherwise only the first is kept).
    pub parallel: bool,
    /// The offered functions' names.
    pub names: Vec<String>,
}

impl Tooling {
    fn parser(&self) -> ToolParser {
        ToolParser::new(self.syntax).untagged_calls_of(self.names.clone())
    }
}

/// A new tool call id, as OpenAI writes them.
fn call_id() -> String {
    format!("call_{:016x}", request::rand_seed())
}

/// A tool call in a response message.
fn call_json(call: &ParsedCall) -> Value {
    json!({"id": call_id(), "type": "function",
           "function": {"name": call.name, "arguments": call.arguments}})
}

/// The finish reason of a choice that made calls: `tool_calls` where the model ended by itself.
fn reason_with_calls(reason: &'static str, calls: usize) -> &'static str {
    if calls > 0 && reason == "stop" {
        "tool_calls"
    } else {
        reason
    }
}

impl Ids {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn usage(u: Usage) -> Value {
        json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
               "total_tokens": u.prompt_tokens + u.completion_tokens,
               "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
    }

    /// Log-probabilities in the endpoint's shape; `offset` is where the tokens' text starts (after an echoed prompt).
    pub fn logprobs_json(&self, lps: &[TokenLogprob], offset: usize) -> Value {
        if self.chat {
            let entry = |t: &str, l: f32| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
            json!({"content": lps.iter().map(|lp| {
                let mut e = entry(&lp.token, lp.logprob);
                e["top_logprobs"] = lp.top.iter().map(|(t, l)| entry(t, *l)).collect();
                e
            }).collect::<Vec<_>>()})
        } else {
            let mut next = offset;
            let offsets: Vec<usize> = lps
                .iter()
                .map(|lp| {
                    let o = next;
                    next += lp.token.len();
                    o
                })
                .collect();
            json!({
                "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| if l.logprob.is_nan() {
                    Value::Null
                } else {
                    Value::Object(l.top.iter().map(|(t, p)| (t.clone(), json!(p))).collect())
                }).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }

    /// A whole response; `echo` holds each choice's echoed prompt (empty: none).
    pub fn full(
        &self,
        choices: &[Choice],
        want_logprobs: bool,
        echo: &[Echo],
        usage: Usage,
    ) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .map(|c| {
                let (echoed, echoed_lps) = echo
                    .get(c.index)
                    .map_or(("", &[][..]), |e| (e.text.as_str(), &e.logprobs[..]));
                let lp = want_logprobs.then(|| {
                    if echoed_lps.is_empty() {
                        self.logprobs_json(&c.logprobs, echoed.len())
                    } else {
                        self.logprobs_json(&[echoed_lps, &c.logprobs[..]].concat(), 0)
                    }
                });
                let (reasoning, answer) = match (self.chat, self.thinking) {
                    (true, Some(opened)) => split_reply(opened, &c.text),
                    _ => (String::new(), c.text.clone()),
                };
                let with_reasoning = |mut choice: Value| {
                    if !reasoning.is_empty() {
                        choice["message"]["reasoning_content"] = json!(reasoning);
                    }
                    choice
                };
                if let (true, Some(tooling)) = (self.chat, &self.tools) {
                    let (content, mut calls) = parse_output(tooling.parser(), &answer);
                    if !tooling.parallel {
                        calls.truncate(1);
                    }
                    let mut message = json!({"role": "assistant",
                                             "content": (!content.is_empty() || calls.is_empty()).then_some(content)});
                    if !calls.is_empty() {
                        message["tool_calls"] = calls.iter().map(call_json).collect();
                    }
                    with_reasoning(json!({"index": c.index, "message": message, "logprobs": lp,
                           "finish_reason": reason_with_calls(c.reason, calls.len())}))
                } else if self.chat {
                    with_reasoning(json!({"index": c.index, "message": {"role": "assistant", "content": answer},
                           "logprobs": lp, "finish_reason": c.reason}))
                } else {
                    json!({"index": c.index, "text": format!("{echoed}{}", c.text), "logprobs": lp,
                           "finish_reason": c.reason})
                }
            })
            .collect();
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
               "choices": choices, "usage": Ids::usage(usage)})
    }

    fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        logprobs: Option<Value>,
        reason: Option<&str>,
    ) -> Value {
        let choice = if self.chat {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None if reason.is_none() => json!({"role": "assistant", "content": ""}),
                None => json!({}),
            };
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
        } else {
            json!({"index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason})
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
               "choices": [choice]})
    }
}

impl Ids {
    /// The streamed delta of choice `index`'s call number `number`: its id, name and whole arguments at once.
    fn call_chunk(&self, index: usize, number: usize, call: &ParsedCall) -> Value {
        let delta = json!({"tool_calls": [{"index": number, "id": call_id(), "type": "function",
                                           "function": {"name": call.name, "arguments": call.arguments}}]});
        self.delta_chunk(index, delta)
    }

    /// A chat chunk of choice `index` carrying `delta`.
    fn delta_chunk(&self, index: usize, delta: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
               "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]})
    }
}

/// What a streamed response holds on to while it runs: the engine requests' cancellations (one per choice; `None`
/// where nothing was submitted) and the request's count in flight. Dropped early (the client went away), the requests
/// are cancelled.
pub type Guards = (Vec<Option<Cancel>>, listen::Flight);

/// The SSE events of a streamed response over the choices of `rx`; `echo` per choice as in [`Ids::full`].
pub fn stream(
    ids: Ids,
    rx: tokio::sync::mpsc::UnboundedReceiver<(usize, Chunk)>,
    echo: Vec<Echo>,
    totals: Totals,
    include_usage: bool,
    want_logprobs: bool,
    guards: Guards,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    struct State {
        ids: Ids,
        rx: tokio::sync::mpsc::UnboundedReceiver<(usize, Chunk)>,
        /// Events ready to go out before the next chunk is awaited.
        queue: VecDeque<String>,
        /// Text already sent per choice (the offset of its next log-probabilities).
        sent: Vec<usize>,
        running: usize,
        totals: Totals,
        guards: Guards,
        ended: bool,
        /// Per choice when the model thinks or was offered tools: how its reply is split.
        splitters: Vec<Splitter>,
        /// Log-probabilities of text a parser holds back, sent with the next text that goes out.
        held_logprobs: Vec<Vec<TokenLogprob>>,
    }
    /// A choice's thinking splitter and tool-call parser, and the calls it has sent.
    struct Splitter {
        think: Option<ThinkSplitter>,
        tools: Option<ToolParser>,
        calls: usize,
    }
    impl State {
        /// Queues a choice's new reply text (`None`: the end) as reasoning, content and call deltas.
        fn split(&mut self, index: usize, text: Option<&str>, want_logprobs: bool) {
            let splitter = &mut self.splitters[index];
            let parts = match (&mut splitter.think, text) {
                (Some(think), Some(text)) => think.push(text),
                (Some(think), None) => think.finish(),
                (None, Some(text)) => vec![Part::Answer(text.to_string())],
                (None, None) => Vec::new(),
            };
            let mut pieces = Vec::new();
            for part in parts {
                match part {
                    Part::Reasoning(r) => {
                        self.send_pieces(index, std::mem::take(&mut pieces), want_logprobs);
                        let delta = json!({"reasoning_content": r});
                        self.queue
                            .push_back(self.ids.delta_chunk(index, delta).to_string());
                    }
                    Part::Answer(a) => match &mut self.splitters[index].tools {
                        Some(tools) => pieces.extend(tools.push(&a)),
                        None => pieces.push(Piece::Text(a)),
                    },
                }
            }
            if text.is_none() {
                if let Some(tools) = &mut self.splitters[index].tools {
                    pieces.extend(tools.finish());
                }
            }
            self.send_pieces(index, pieces, want_logprobs);
        }

        /// Queues the text and calls a choice's parser gave out (past the first call unless parallel calls are on).
        fn send_pieces(&mut self, index: usize, pieces: Vec<Piece>, want_logprobs: bool) {
            let parallel = self.ids.tools.as_ref().is_some_and(|t| t.parallel);
            for piece in pieces {
                match piece {
                    Piece::Text(text) => {
                        let logprobs = std::mem::take(&mut self.held_logprobs[index]);
                        let lp = want_logprobs.then(|| self.ids.logprobs_json(&logprobs, 0));
                        self.queue
                            .push_back(self.ids.chunk(index, Some(&text), lp, None).to_string());
                    }
                    Piece::Call(call) => {
                        let sent = &mut self.splitters[index].calls;
                        if *sent > 0 && !parallel {
                            continue;
                        }
                        let chunk = self.ids.call_chunk(index, *sent, &call);
                        *sent += 1;
                        self.queue.push_back(chunk.to_string());
                    }
                }
            }
        }
    }
    let choices = guards.0.len();
    let mut queue = VecDeque::new();
    for index in 0..choices {
        match echo.get(index) {
            _ if ids.chat => queue.push_back(ids.chunk(index, None, None, None).to_string()),
            Some(echoed) if !echoed.text.is_empty() => {
                let lp = (want_logprobs && !echoed.logprobs.is_empty())
                    .then(|| ids.logprobs_json(&echoed.logprobs, 0));
                queue.push_back(ids.chunk(index, Some(&echoed.text), lp, None).to_string())
            }
            _ => {}
        }
    }
    let sent = (0..choices)
        .map(|i| echo.get(i).map_or(0, |e| e.text.len()))
        .collect();
    let splitters = if ids.chat && (ids.tools.is_some() || ids.thinking.is_some()) {
        (0..choices)
            .map(|_| Splitter {
                think: ids.thinking.map(ThinkSplitter::new),
                tools: ids.tools.as_ref().map(Tooling::parser),
                calls: 0,
            })
            .collect()
    } else {
        Vec::new()
    };
    let state = State {
        splitters,
        held_logprobs: vec![Vec::new(); choices],
        ids,
        rx,
        queue,
        sent,
        running: choices,
        totals,
        guards,
        ended: false,
    };
    futures_util::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(event) = st.queue.pop_front() {
                return Some((Ok(SseEvent::default().data(event)), st));
            }
            if st.ended {
                return None;
            }
            if st.running == 0 {
                if include_usage {
                    let v = json!({"id": st.ids.id, "object": st.ids.object(true), "created": st.ids.created,
                                   "model": st.ids.model, "choices": [], "usage": Ids::usage(st.totals.usage)});
                    st.queue.push_back(v.to_string());
                }
                st.queue.push_back("[DONE]".into());
                st.ended = true;
                continue;
            }
            match st.rx.recv().await {
                Some((index, Chunk::Delta { text, logprobs })) if index < st.splitters.len() => {
                    st.held_logprobs[index].extend(logprobs);
                    st.split(index, Some(&text), want_logprobs);
                }
                Some((index, Chunk::Done { reason, usage })) if index < st.splitters.len() => {
                    st.split(index, None, want_logprobs);
                    if let Some(Some(cancel)) = st.guards.0.get_mut(index) {
                        cancel.done = true;
                    }
                    st.totals.add(index, usage);
                    st.running -= 1;
                    let reason = reason_with_calls(reason, st.splitters[index].calls);
                    st.queue
                        .push_back(st.ids.chunk(index, None, None, Some(reason)).to_string());
                }
                Some((index, Chunk::Delta { text, logprobs })) => {
                    let offset = st.sent.get(index).copied().unwrap_or(0);
                    let lp = want_logprobs.then(|| st.ids.logprobs_json(&logprobs, offset));
                    if let Some(s) = st.sent.get_mut(index) {
                        *s += text.len();
                    }
                    st.queue
                        .push_back(st.ids.chunk(index, Some(&text), lp, None).to_string());
                }
                Some((index, Chunk::Done { reason, usage })) => {
                    if let Some(Some(cancel)) = st.guards.0.get_mut(index) {
                        cancel.done = true;
                    }
                    st.totals.add(index, usage);
                    st.running -= 1;
                    st.queue
                        .push_back(st.ids.chunk(index, None, None, Some(reason)).to_string());
                }
                Some((_, Chunk::Failed(message))) => {
                    // OpenAI's clients raise an error for a `data:` event holding an `error` object.
                    let v = json!({"error": {"message": message, "type": "server_error",
                                             "param": null, "code": null}});
                    st.queue.push_back(v.to_string());
                    st.ended = true;
                }
                None => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(tools: Option<Tooling>, thinking: Option<bool>) -> Ids {
        Ids {
            id: "chatcmpl-1".into(),
            created: 0,
            model: "m".into(),
            chat: true,
            tools,
            thinking,
        }
    }

    fn choice(text: &str) -> Choice {
        Choice {
            index: 0,
            text: text.into(),
            logprobs: Vec::new(),
            reason: "stop",
        }
    }

    #[test]
    fn thinking_goes_to_reasoning_content_and_calls_to_tool_calls() {
        let body = ids(None, Some(false)).full(
            &[choice("<think>\nadd them</think>\n\n4")],
            false,
            &[],
            Usage::default(),
        );
        let message = &body["choices"][0]["message"];
        assert_eq!(message["reasoning_content"], "add them");
        assert_eq!(message["content"], "4");
        let tooling = Tooling {
            syntax: ToolSyntax::Hermes,
            parallel: false,
            names: vec!["f".into()],
        };
        let text = "<think>call f</think><tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        let body =
            ids(Some(tooling), Some(false)).full(&[choice(text)], false, &[], Usage::default());
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["reasoning_content"], "call f");
        assert!(choice["message"]["content"].is_null());
        // Parallel calls off: only the first.
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["function"]["arguments"], r#"{"a":1}"#);
        // Without thinking, the tags are the answer's text.
        let body = ids(None, None).full(&[choice_text()], false, &[], Usage::default());
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "<think>x</think>y"
        );
        assert!(body["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
    }

    fn choice_text() -> Choice {
        choice("<think>x</think>y")
    }
}
