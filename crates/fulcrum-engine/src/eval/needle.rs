//! A needle in a haystack: a fact ("the special magic number of the blue lighthouse is 4829137") hidden at a chosen
//! depth of a long text, a question about it at the end, and the greedy answer checked by string match. The haystack
//! is free-licence text found on every Debian machine (/usr/share/common-licenses) or, failing that, Fulcrum's own
//! documentation, so that anyone can run the same set.

use crate::chat::ChatError;
use crate::prompt;
use crate::sampler::argmax;
use fulcrum_core::{DeltaConfig, Model, ModelError, Session};

/// Licence texts that Debian installs on every machine (base-files), in the order the haystack uses them.
const LICENCES: [&str; 8] = [
    "GPL-3",
    "Apache-2.0",
    "GPL-2",
    "LGPL-3",
    "MPL-2.0",
    "Artistic",
    "GFDL-1.3",
    "LGPL-2.1",
];

/// Keys of the hidden facts, one per case in turn.
const KEYS: [&str; 6] = [
    "the blue lighthouse",
    "the copper kettle",
    "Operation Juniper",
    "the seventh harbour",
    "the silent orchard",
    "the granite owl",
];

/// The haystack's text: the licences, repeated as needed by the caller; Fulcrum's docs where they are missing.
pub fn haystack_text() -> String {
    let mut text = String::new();
    for name in LICENCES {
        if let Ok(t) = std::fs::read_to_string(format!("/usr/share/common-licenses/{name}")) {
            text.push_str(&t);
            text.push_str("\n\n");
        }
    }
    if text.len() < 10_000 {
        text.push_str(include_str!("../../../../docs/architecture.md"));
        text.push_str(include_str!("../../../../README.md"));
    }
    text
}

/// One question: the prompt's tokens (chat template applied), the answer expected, and where the fact sits.
#[derive(Clone, Debug)]
pub struct Case {
    /// Prompt length asked for, in tokens.
    pub length: usize,
    /// Where the fact sits, as a fraction of the haystack (0: its start, 1: its end).
    pub depth: f64,
    pub key: &'static str,
    pub answer: String,
    pub prompt: Vec<u32>,
}

/// The case of `length` tokens with its fact at `depth`, the `index`-th case of a set (which picks the key and the
/// number). The haystack's paragraphs are taken in order until the prompt would exceed `length` tokens.
pub fn case(
    model: &Model,
    haystack: &str,
    length: usize,
    depth: f64,
    index: usize,
) -> Result<Case, ChatError> {
    let key = KEYS[index % KEYS.len()];
    // A deterministic 7-digit number per case.
    let answer =
        (1_000_000 + (index as u64 * 7_919 + length as u64 * 104_729) % 9_000_000).to_string();
    let fact = format!("The special magic number of {key} is {answer}.");
    let question = format!(
        "\n\nWhat is the special magic number of {key} mentioned in the text above? Answer with the number only."
    );
    let tok = &model.tokenizer;
    let overhead = tok
        .encode(&format!("{fact}\n\n{question}"), false, false)
        .len()
        + 32;
    let budget = length.saturating_sub(overhead);
    // Whole paragraphs while they fit, then the lines of the next one that fit.
    let mut paragraphs: Vec<String> = Vec::new();
    let mut used = 0;
    'fill: loop {
        let before = paragraphs.len();
        for p in haystack.split("\n\n").filter(|p| !p.trim().is_empty()) {
            let n = tok.encode(p, false, false).len() + 2;
            if used + n <= budget {
                used += n;
                paragraphs.push(p.to_string());
                continue;
            }
            let mut part = String::new();
            for line in p.lines() {
                let n = tok.encode(line, false, false).len() + 1;
                if used + n > budget {
                    break;
                }
                used += n;
                part.push_str(line);
                part.push('\n');
            }
            if !part.is_empty() {
                paragraphs.push(part);
            }
            break 'fill;
        }
        if paragraphs.len() == before {
            break;
        }
    }
    let at = ((paragraphs.len() as f64) * depth.clamp(0.0, 1.0)).round() as usize;
    let mut body = String::new();
    for (i, p) in paragraphs.iter().enumerate() {
        if i == at {
            body.push_str(&fact);
            body.push_str("\n\n");
        }
        body.push_str(p);
        body.push_str("\n\n");
    }
    if at >= paragraphs.len() {
        body.push_str(&fact);
    }
    body.push_str(&question);
    let text = prompt::user_prompt(model, &body, None, false)?;
    Ok(Case {
        length,
        depth,
        key,
        answer,
        prompt: prompt::tokenize(model, &text),
    })
}

/// A greedy answer and whether it holds the expected number.
#[derive(Clone, Debug)]
pub struct Answer {
    pub text: String,
    pub found: bool,
    /// Positions DELTA's rows attended to, and dense attention would have (summed over rows and layers).
    pub attended: u64,
    pub context: u64,
}

/// Prefills `case` once (densely), then answers it greedily (at most `max_tokens` tokens) under each of `modes`
/// (`None`: dense; `Some`: DELTA's settings), from the same prefilled cache.
pub fn answer(
    session: &mut Session,
    case: &Case,
    modes: &[Option<DeltaConfig>],
    max_tokens: usize,
) -> Result<Vec<Answer>, ModelError> {
    let model = session.model.clone();
    let tok = &model.tokenizer;
    session.truncate(0);
    session.set_delta(None).map_err(ModelError::BadBatch)?;
    let first = session.eval_last(&case.prompt)?.to_vec();
    let mut out = Vec::new();
    for mode in modes {
        session.truncate(case.prompt.len());
        session
            .set_delta(mode.clone())
            .map_err(ModelError::BadBatch)?;
        let counted = session.attention_counts();
        let mut logits = first.clone();
        let mut ids = Vec::new();
        for _ in 0..max_tokens {
            let next = argmax(&logits);
            if tok.is_eog(next) || session.len() + 1 >= session.n_ctx() {
                break;
            }
            ids.push(next);
            logits = session.eval_last(&[next])?.to_vec();
        }
        let text = tok.decode(&ids, false);
        let (attended, context) = session.attention_counts();
        out.push(Answer {
            found: text.contains(&case.answer),
            text,
            attended: attended - counted.0,
            context: context - counted.1,
        });
    }
    session.set_delta(None).map_err(ModelError::BadBatch)?;
    Ok(out)
}
