//! The stable-toolchain fuzzer (`crates/fulcrum-gguf/tests/fuzzing/driver.rs`) over the chat-template renderer:
//! arbitrary conversations through real templates, and arbitrary template sources (templates come from model files,
//! so they are untrusted input). Rendering returns text or an error, within its fuel, and never panics; located
//! content spans hold the content. Long runs: `scripts/fuzz.sh`.

#[path = "../../fulcrum-gguf/tests/fuzzing/driver.rs"]
mod fuzzing;

use fulcrum_engine::chat::{ChatTemplate, Message};

const QWEN: &str = include_str!("data/qwen2.5-chat-template.jinja");
const GEMMA_STYLE: &str = include_str!("data/gemma-style-chat-template.jinja");
const ROLES: [&str; 6] = ["system", "user", "assistant", "tool", "wizard", ""];

/// Messages from bytes: split at NUL bytes, the first byte of each picks the role.
fn messages(bytes: &[u8]) -> Vec<Message> {
    bytes
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let role = ROLES[part[0] as usize % ROLES.len()];
            Message::new(role, String::from_utf8_lossy(&part[1..]))
        })
        .collect()
}

#[test]
fn fuzz_chat_conversations() {
    let templates = [
        ChatTemplate::new(Some(QWEN), "", "<|im_end|>").unwrap(),
        ChatTemplate::new(Some(GEMMA_STYLE), "<bos>", "<eos>").unwrap(),
        ChatTemplate::new(None, "", "").unwrap(),
    ];
    let fuzz = fuzzing::Fuzz {
        name: "chat-conversations",
        seeds: vec![
            b"\x00Be brief.\x00\x01Hello\x00\x02Hi there\x00\x01Bye".to_vec(),
            b"\x01 spaced \x00\x02<|im_end|>\x00\x01<end_of_turn>".to_vec(),
        ],
        dictionary: fuzzing::words(&[
            "<|im_start|>",
            "<|im_end|>",
            "<end_of_turn>",
            "{{",
            "{%",
            "\u{F8F0}0\u{F8F1}",
            "  ",
        ]),
        crate_dir: env!("CARGO_MANIFEST_DIR"),
        max_len: 1024,
    };
    fuzz.run(|bytes| {
        let messages = messages(bytes);
        for template in &templates {
            for add_generation_prompt in [false, true] {
                let Ok((text, spans)) =
                    template.render_spans(&messages, &[], add_generation_prompt)
                else {
                    continue;
                };
                for span in spans.iter().flatten() {
                    let located = &text[span.clone()];
                    assert!(
                        messages
                            .iter()
                            .any(|m| m.content == located || m.content.trim() == located),
                        "a span holds no message's content: {located:?}"
                    );
                }
            }
        }
    });
}

#[test]
fn fuzz_chat_template_sources() {
    let fuzz = fuzzing::Fuzz {
        name: "chat-template-sources",
        seeds: vec![
            QWEN.as_bytes().to_vec(),
            GEMMA_STYLE.as_bytes().to_vec(),
            b"{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}".to_vec(),
            b"{% macro f(n) %}{{ f(n - 1) }}{% endmacro %}{{ f(3) }}{{ raise_exception('x') }}"
                .to_vec(),
        ],
        dictionary: fuzzing::words(&[
            "{%",
            "%}",
            "{{",
            "}}",
            "{#",
            "#}",
            " for m in messages ",
            " endfor ",
            " if ",
            " else ",
            " endif ",
            " macro f(x) ",
            " endmacro ",
            " f(x) ",
            " set ns = namespace(a=1) ",
            "loop.index",
            "| tojson",
            "| trim",
            ".split('a')",
            "[::-1]",
            "* 99999",
            "~ bos_token ~",
            "raise_exception('no')",
            "strftime_now('%Y')",
            " recursive ",
            "loop(m)",
            "range(100000)",
        ]),
        crate_dir: env!("CARGO_MANIFEST_DIR"),
        max_len: 8192,
    };
    let conversation = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hello"),
        Message::new("assistant", "Hi"),
        Message::new("user", "Bye"),
    ];
    fuzz.run(|bytes| {
        let source = String::from_utf8_lossy(bytes);
        if let Ok(template) = ChatTemplate::new(Some(&source), "<s>", "</s>") {
            let _ = template.render(&conversation, true);
            let _ = template.render_spans(&conversation[1..2], &[], false);
        }
    });
}
