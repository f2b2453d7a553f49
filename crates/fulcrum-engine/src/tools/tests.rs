use super::*;
use crate::chat::{ChatTemplate, ToolCall};
use crate::constraint::{ConstraintFactory, ConstraintSpec};
use proptest::prelude::*;

fn call(name: &str, arguments: &str) -> Piece {
    Piece::Call(ParsedCall {
        name: name.into(),
        arguments: arguments.into(),
    })
}

fn weather() -> Tool {
    let definition = json!({"type": "function", "function": {"name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                       "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}});
    Tool {
        name: "get_weather".into(),
        parameters: definition["function"]["parameters"].clone(),
        definition,
    }
}

/// Feeds `text` to a parser in pieces split at `cuts` (byte offsets, rounded to char boundaries), merging text.
fn parse_in_pieces(syntax: ToolSyntax, text: &str, cuts: &[usize]) -> Vec<Piece> {
    let mut parser = ToolParser::new(syntax);
    let mut pieces = Vec::new();
    let mut last = 0;
    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|&c| c % (text.len() + 1))
        .filter(|&c| text.is_char_boundary(c))
        .collect();
    cuts.sort_unstable();
    for cut in cuts.into_iter().chain([text.len()]) {
        if cut < last {
            continue;
        }
        for piece in parser.push(&text[last..cut]) {
            merge(&mut pieces, piece);
        }
        last = cut;
    }
    for piece in parser.finish() {
        merge(&mut pieces, piece);
    }
    pieces
}

fn merge(pieces: &mut Vec<Piece>, piece: Piece) {
    match (pieces.last_mut(), piece) {
        (Some(Piece::Text(last)), Piece::Text(t)) => last.push_str(&t),
        (_, piece) => pieces.push(piece),
    }
}

#[test]
fn hermes_blocks_become_calls_and_text_stays_text() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    let pieces = parse_in_pieces(ToolSyntax::Hermes, text, &[]);
    assert_eq!(
        pieces,
        vec![
            Piece::Text("Let me check.\n".into()),
            call("get_weather", r#"{"city":"Paris"}"#),
            Piece::Text("\n".into()),
            call("get_time", "{}"),
        ]
    );
    let (content, calls) = parse_output(ToolParser::new(ToolSyntax::Hermes), text);
    assert_eq!(content, "Let me check.");
    assert_eq!(calls.len(), 2);
}

#[test]
fn text_without_calls_is_unchanged_and_a_partial_marker_is_released_at_the_end() {
    for text in ["plain answer", "a < b and <tool", "x <tool_call"] {
        let (content, calls) = parse_output(ToolParser::new(ToolSyntax::Hermes), text);
        assert!(calls.is_empty(), "{text}");
        assert_eq!(content, text);
    }
    // An unclosed block whose JSON is a whole call counts; one that is not stays text.
    let (_, calls) = parse_output(
        ToolParser::new(ToolSyntax::Hermes),
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}",
    );
    assert_eq!(
        calls,
        vec![ParsedCall {
            name: "f".into(),
            arguments: r#"{"a":1}"#.into()
        }]
    );
    let broken = "<tool_call>\n{\"name\": \"f\", \"argu</tool_call> done";
    let (content, calls) = parse_output(ToolParser::new(ToolSyntax::Hermes), broken);
    assert!(calls.is_empty());
    assert_eq!(content, broken);
}

#[test]
fn the_parser_holds_back_only_what_may_start_a_call() {
    let mut parser = ToolParser::new(ToolSyntax::Hermes);
    assert_eq!(
        parser.push("Hello <tool"),
        vec![Piece::Text("Hello ".into())]
    );
    assert_eq!(
        parser.push("box> ok"),
        vec![Piece::Text("<toolbox> ok".into())]
    );
    assert_eq!(parser.push("<tool_call>{\"name\""), vec![]);
    assert_eq!(parser.push(": \"g\"}</tool_call>"), vec![call("g", "{}")]);
}

proptest! {
    /// However the output is cut into deltas, the parse is the same as of the whole.
    #[test]
    fn streaming_cuts_do_not_change_the_parse(cuts in proptest::collection::vec(0usize..400, 0..12)) {
        let texts = [
            (ToolSyntax::Hermes, "Sure — é.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n</tool_call>\ntrailing <tool"),
            (ToolSyntax::Llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"t\", \"parameters\": {}}"),
            (ToolSyntax::Llama3, "No call here {\"name\": 1}"),
            (ToolSyntax::Mistral, "ok [TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": [1, 2]}}, {\"name\": \"b\", \"arguments\": {}}]"),
            (ToolSyntax::Mistral, "[TOOL_CALLS]a[ARGS]{\"x\": 1}[TOOL_CALLS]b[ARGS]{}"),
        ];
        for (syntax, text) in texts {
            let whole = parse_in_pieces(syntax, text, &[]);
            prop_assert_eq!(parse_in_pieces(syntax, text, &cuts), whole);
        }
    }
}

#[test]
fn llama3_and_mistral_syntaxes_parse() {
    let (content, calls) = parse_output(
        ToolParser::new(ToolSyntax::Llama3),
        "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
    );
    assert_eq!(content, "");
    assert_eq!(
        calls,
        vec![ParsedCall {
            name: "get_weather".into(),
            arguments: r#"{"city":"Oslo"}"#.into()
        }]
    );
    let (content, calls) = parse_output(
        ToolParser::new(ToolSyntax::Llama3),
        "The answer is {not json}",
    );
    assert!(calls.is_empty());
    assert_eq!(content, "The answer is {not json}");
    let (content, calls) = parse_output(
        ToolParser::new(ToolSyntax::Mistral),
        "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": \"{}\"}]",
    );
    assert_eq!(content, "");
    assert_eq!(
        calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect::<Vec<_>>(),
        vec![("a", r#"{"x":1}"#), ("b", "{}")]
    );
    let (_, calls) = parse_output(
        ToolParser::new(ToolSyntax::Mistral),
        "[TOOL_CALLS]a[ARGS]{\"x\": 1}[TOOL_CALLS]b[ARGS]{}",
    );
    assert_eq!(calls.len(), 2);
}

#[test]
fn syntax_follows_the_template() {
    let qwen = include_str!("../../tests/data/qwen2.5-chat-template.jinja");
    assert_eq!(ToolSyntax::of_template(Some(qwen)), ToolSyntax::Hermes);
    assert_eq!(
        ToolSyntax::of_template(Some("{{ '[TOOL_CALLS]' }}")),
        ToolSyntax::Mistral
    );
    assert_eq!(
        ToolSyntax::of_template(Some("{{ '<|python_tag|>' }} ipython")),
        ToolSyntax::Llama3
    );
    assert_eq!(ToolSyntax::of_template(None), ToolSyntax::Hermes);
}

/// A byte-level vocabulary for grammar tests: one token per byte and an end token.
fn bytes_factory() -> ConstraintFactory {
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    tokens.push(b"\xff<eos>".to_vec());
    ConstraintFactory::new(tokens, &[256]).expect("factory")
}

fn grammar_accepts(grammar: &str, text: &str) -> bool {
    let factory = bytes_factory();
    let mut constraint = factory
        .compile(&ConstraintSpec::Lark(grammar.to_string()))
        .expect("grammar compiles");
    text.bytes().all(|b| constraint.commit(b as u32).is_ok()) && constraint.is_accepting()
}

#[test]
fn forced_calls_follow_the_functions_schema() {
    let time = Tool {
        name: "get_time".into(),
        definition: json!({"type": "function", "function": {"name": "get_time"}}),
        parameters: json!({"type": "object"}),
    };
    let tools = [weather(), time];
    // The grammar of `choice` in `syntax` over both tools, with no control tokens known.
    let grammar = |syntax, choice: &ToolChoice, parallel| {
        call_grammar(syntax, &tools, choice, parallel, |_| None)
    };
    let required = grammar(ToolSyntax::Hermes, &ToolChoice::Required, true).unwrap();
    let good = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>";
    assert!(grammar_accepts(&required, good), "{required}");
    assert!(grammar_accepts(
        &required,
        &format!(
            "{good}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{}}}}\n</tool_call>"
        )
    ));
    for bad in [
        "hello",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"kelvin\"}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>",
    ] {
        assert!(!grammar_accepts(&required, bad), "{bad}");
    }
    let named = grammar(
        ToolSyntax::Hermes,
        &ToolChoice::Function("get_time".into()),
        true,
    )
    .unwrap();
    assert!(grammar_accepts(
        &named,
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
    ));
    assert!(!grammar_accepts(&named, good));
    let single = grammar(ToolSyntax::Hermes, &ToolChoice::Required, false).unwrap();
    assert!(!grammar_accepts(&single, &format!("{good}\n{good}")));
    let llama = grammar(ToolSyntax::Llama3, &ToolChoice::Required, true).unwrap();
    assert!(grammar_accepts(
        &llama,
        "{\"name\": \"get_time\", \"parameters\": {}}"
    ));
    let mistral = grammar(ToolSyntax::Mistral, &ToolChoice::Required, true).unwrap();
    assert!(grammar_accepts(
        &mistral,
        "[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}]"
    ));
    assert!(grammar(ToolSyntax::Hermes, &ToolChoice::Auto, true).is_none());
}

#[test]
fn qwen_renders_tools_calls_and_results_as_hugging_face_does() {
    let template = ChatTemplate::new(
        Some(include_str!("../../tests/data/qwen2.5-chat-template.jinja")),
        "",
        "<|im_end|>",
    )
    .unwrap();
    assert!(template.renders_tools());
    let mut assistant = Message::new("assistant", "");
    assistant.tool_calls.push(ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris","unit":"celsius"}"#.into(),
    });
    let mut result = Message::new("tool", "{\"temperature\": 21}");
    result.tool_call_id = Some("call_1".into());
    let messages = [Message::new("user", "Weather in Paris?"), assistant, result];
    let text = template
        .render_tools(&messages, &[weather()], true)
        .unwrap();
    // Python's json.dumps separators, keys in the request's order, non-ASCII kept.
    assert!(text.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Current weather in a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"unit\": {\"enum\": [\"celsius\", \"fahrenheit\"]}}, \"required\": [\"city\", \"unit\"]}}}\n</tools>"), "{text}");
    assert!(text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call><|im_end|>\n"), "{text}");
    assert!(text.contains("<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"), "{text}");
    // The content spans still line up with the real rendering.
    let (spanned, spans) = template
        .render_spans(&messages, &[weather()], true)
        .unwrap();
    assert_eq!(spanned, text);
    let spans = spans.expect("spans found");
    assert_eq!(&text[spans[0].clone()], "Weather in Paris?");
    assert_eq!(&text[spans[1].clone()], "{\"temperature\": 21}");
}

#[test]
fn templates_without_tools_get_them_described_in_the_system_turn() {
    let template = ChatTemplate::new(
        Some(include_str!(
            "../../tests/data/gemma-style-chat-template.jinja"
        )),
        "<bos>",
        "<eos>",
    )
    .unwrap();
    assert!(!template.renders_tools());
    let mut assistant = Message::new("assistant", "");
    assistant.tool_calls.push(ToolCall {
        id: "c".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Oslo"}"#.into(),
    });
    let messages = [
        Message::new("user", "Weather?"),
        assistant,
        Message::new("tool", "sunny"),
        Message::new("tool", "warm"),
    ];
    let text = template
        .render_tools(&messages, &[weather()], true)
        .unwrap();
    assert!(text.contains("<tools>\n{\"type\":\"function\""), "{text}");
    assert!(text.contains("<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>"), "{text}");
    assert!(
        text.contains(
            "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nwarm\n</tool_response>"
        ),
        "{text}"
    );
    // The plain fallback format too.
    let plain = ChatTemplate::new(None, "", "").unwrap();
    let text = plain
        .render_tools(&[Message::new("user", "hi")], &[weather()], true)
        .unwrap();
    assert!(
        text.starts_with("system: You may call one or more functions"),
        "{text}"
    );
}

#[test]
fn untagged_json_calls_of_offered_functions_count_as_calls() {
    let parser =
        || ToolParser::new(ToolSyntax::Hermes).untagged_calls_of(vec!["get_weather".into()]);
    let (content, calls) = parse_output(
        parser(),
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    );
    assert_eq!((content.as_str(), calls.len()), ("", 1));
    for text in [
        "{\"name\": \"cat joke\", \"arguments\": {}}",
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}",
        "{\"a\": 1} is a JSON object",
    ] {
        let (content, calls) = parse_output(parser(), text);
        assert!(calls.is_empty(), "{text}");
        assert_eq!(content, text);
    }
    let fenced =
        "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\"city\": \"Oslo\"}\n}\n```";
    let (content, calls) = parse_output(parser(), fenced);
    assert_eq!((content.as_str(), calls.len()), ("", 1));
    let (content, calls) = parse_output(parser(), "```python\nprint(1)\n```");
    assert!(calls.is_empty());
    assert_eq!(content, "```python\nprint(1)\n```");
    // Without names offered, untagged JSON is text.
    let (_, calls) = parse_output(
        ToolParser::new(ToolSyntax::Hermes),
        "{\"name\": \"get_weather\", \"arguments\": {}}",
    );
    assert!(calls.is_empty());
    // Text that opens with JSON but holds a tagged call still yields the call.
    let (_, calls) = parse_output(
        parser(),
        "{} then <tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>",
    );
    assert_eq!(calls.len(), 1);
}

/// A conversation with one call and its result, for template checks.
fn called() -> Vec<Message> {
    let mut assistant = Message::new("assistant", "");
    assistant.tool_calls.push(ToolCall {
        id: "call_0123456789abcdef".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris"}"#.into(),
    });
    let mut result = Message::new("tool", "21 C");
    result.tool_call_id = Some("call_0123456789abcdef".into());
    vec![Message::new("user", "Weather?"), assistant, result]
}

#[test]
fn templates_that_join_arguments_to_strings_get_json_text() {
    // In the way of DeepSeek-R1's template: arguments concatenated as text, not written with tojson.
    let source = "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name + '\\n' + c.function.arguments }}{% endfor %}{% else %}[{{ m.role }}]{{ m.content }}{% endif %}{% endfor %}";
    let template = ChatTemplate::new(Some(source), "", "").unwrap();
    let text = template.render(&called(), false).unwrap();
    assert_eq!(
        text,
        "[user]Weather?get_weather\n{\"city\":\"Paris\"}[tool]21 C"
    );
}

#[test]
fn mistral_style_templates_see_calls_ids_and_tools() {
    // In the way of Mistral's templates: `get`, `is defined`, ids cut to 9 characters, the function written by tojson.
    let source = "{% if tools is not none %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}{% for m in messages %}{% if m.tool_calls is defined %}[TOOL_CALLS]{% for c in m.tool_calls %}{{ (c.function | tojson)[:-1] }}, \"id\": \"{{ c.id[-9:] }}\"}{% endfor %}{% elif m.get('role') == 'tool' %}[TOOL_RESULTS]{{ m.content }}|{{ m.tool_call_id[-9:] }}[/TOOL_RESULTS]{% else %}[INST]{{ m.content }}[/INST]{% endif %}{% endfor %}";
    let template = ChatTemplate::new(Some(source), "", "").unwrap();
    assert!(template.renders_tools());
    assert_eq!(template.tool_syntax(), ToolSyntax::Mistral);
    let text = template
        .render_tools(&called(), &[weather()], false)
        .unwrap();
    assert!(
        text.starts_with(
            "[AVAILABLE_TOOLS][{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""
        ),
        "{text}"
    );
    assert!(text.ends_with("[INST]Weather?[/INST][TOOL_CALLS]{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"789abcdef\"}[TOOL_RESULTS]21 C|789abcdef[/TOOL_RESULTS]"), "{text}");
}
