//! Reasoning models' thinking: the text between `<think>` and `</think>` at the start of a reply, split from the
//! answer so that a server can return it as `reasoning_content`. Templates that open the thinking themselves (the
//! generation prompt ends with `<think>`) start the reply inside it.

/// Whether a chat template marks thinking (its model writes `<think>…</think>` before answering).
pub fn template_thinks(source: Option<&str>) -> bool {
    source.is_some_and(|s| s.contains("</think>"))
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// A part of a reply: thinking, or the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text inside the thinking.
    Reasoning(String),
    /// Text of the answer.
    Answer(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: a `<think>` may still open.
    Start,
    /// Inside the thinking.
    Thinking,
    /// After it (or without any): the answer, passed through.
    Answer,
}

/// Splits a reply into thinking and answer as it arrives, holding back only text that may be a tag.
#[derive(Debug, Clone)]
pub struct ThinkSplitter {
    state: State,
    buffer: String,
    /// Whitespace right after `</think>` is dropped until the answer's first other character.
    trim: bool,
}

impl ThinkSplitter {
    /// A splitter for a reply whose prompt ended inside the thinking (`opened`) or not.
    pub fn new(opened: bool) -> ThinkSplitter {
        ThinkSplitter {
            state: if opened {
                State::Thinking
            } else {
                State::Start
            },
            buffer: String::new(),
            trim: false,
        }
    }

    /// Adds reply text; returns what became decided.
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let rest = self.buffer.trim_start();
                    if let Some(after) = rest.strip_prefix(OPEN) {
                        self.buffer = after.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(rest) {
                        return out;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => {
                    if let Some(at) = self.buffer.find(CLOSE) {
                        let answer = self.buffer.split_off(at + CLOSE.len());
                        self.buffer.truncate(at);
                        push(&mut out, Part::Reasoning(std::mem::take(&mut self.buffer)));
                        self.buffer = answer;
                        self.trim = true;
                        self.state = State::Answer;
                        continue;
                    }
                    let held = crate::generation::held_back(&self.buffer, &[CLOSE]);
                    let keep = self.buffer.split_off(self.buffer.len() - held);
                    push(
                        &mut out,
                        Part::Reasoning(std::mem::replace(&mut self.buffer, keep)),
                    );
                    return out;
                }
                State::Answer => {
                    if self.trim {
                        self.buffer = self.buffer.trim_start().to_string();
                        self.trim = self.buffer.is_empty();
                    }
                    push(&mut out, Part::Answer(std::mem::take(&mut self.buffer)));
                    return out;
                }
            }
        }
    }

    /// Ends the reply: what was held back (an unclosed thinking stays thinking).
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.buffer);
        let mut out = Vec::new();
        match self.state {
            State::Thinking => push(&mut out, Part::Reasoning(rest)),
            State::Answer if self.trim => {
                push(&mut out, Part::Answer(rest.trim_start().to_string()))
            }
            State::Start | State::Answer => push(&mut out, Part::Answer(rest)),
        }
        self.state = State::Answer;
        out
    }
}

fn push(out: &mut Vec<Part>, part: Part) {
    match &part {
        Part::Reasoning(t) | Part::Answer(t) if t.is_empty() => {}
        _ => out.push(part),
    }
}

/// The thinking and the answer of a whole reply (the thinking trimmed).
pub fn split_reply(opened: bool, text: &str) -> (String, String) {
    let mut splitter = ThinkSplitter::new(opened);
    let mut parts = splitter.push(text);
    parts.extend(splitter.finish());
    let (mut reasoning, mut answer) = (String::new(), String::new());
    for part in parts {
        match part {
            Part::Reasoning(t) => reasoning.push_str(&t),
            Part::Answer(t) => answer.push_str(&t),
        }
    }
    (reasoning.trim().to_string(), answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn thinking_is_split_from_the_answer() {
        assert_eq!(
            split_reply(false, "<think>\nLet me add.\n</think>\n\n2 + 2 = 4"),
            ("Let me add.".into(), "2 + 2 = 4".into())
        );
        assert_eq!(
            split_reply(true, "Opened by the prompt.</think>Answer"),
            ("Opened by the prompt.".into(), "Answer".into())
        );
        assert_eq!(
            split_reply(false, "No thinking <think>here</think>"),
            (String::new(), "No thinking <think>here</think>".into())
        );
        assert_eq!(
            split_reply(true, "cut off while thinking"),
            ("cut off while thinking".into(), String::new())
        );
        assert_eq!(split_reply(false, "<thi"), (String::new(), "<thi".into()));
        assert!(template_thinks(Some(
            "{{ '<think>\\n' }}{% if '</think>' in content %}"
        )));
        assert!(!template_thinks(Some("{{ messages }}")));
    }

    proptest! {
        /// However the reply is cut into deltas, the split is the same as of the whole.
        #[test]
        fn cuts_do_not_change_the_split(cuts in proptest::collection::vec(0usize..60, 0..8), opened in any::<bool>()) {
            for text in ["<think>\nstep one </think>\n\nthe ánswer", "plain answer </think>", "  <think>unclosed </thin"] {
                let mut splitter = ThinkSplitter::new(opened);
                let (mut reasoning, mut answer) = (String::new(), String::new());
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).filter(|&c| text.is_char_boundary(c)).collect();
                cuts.sort_unstable();
                let mut last = 0;
                let mut parts = Vec::new();
                for cut in cuts.into_iter().chain([text.len()]) {
                    if cut >= last {
                        parts.extend(splitter.push(&text[last..cut]));
                        last = cut;
                    }
                }
                parts.extend(splitter.finish());
                for part in parts {
                    match part {
                        Part::Reasoning(t) => reasoning.push_str(&t),
                        Part::Answer(t) => answer.push_str(&t),
                    }
                }
                prop_assert_eq!((reasoning.trim().to_string(), answer), split_reply(opened, text));
            }
        }
    }
}
