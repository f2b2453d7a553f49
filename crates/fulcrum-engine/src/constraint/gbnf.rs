//! GBNF (llama.cpp's grammar format, see its `grammars/README.md`) to llguidance's Lark, after llguidance's own
//! `gbnf_to_lark.py`, which the Rust crate does not ship: `root` becomes `start`, names become snake case, and a rule
//! built only of literals, character classes and such rules becomes an uppercase terminal (one lexeme, compiled to a
//! regex), which is what keeps character-level grammars fast.
//!
//! Not supported (an error, not a silent change): llama.cpp's token references (`<[1234]>`, `<|name|>`) and negated
//! tokens (`!<...>`).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// Converts a GBNF grammar to Lark; the error names the line and what was expected there.
pub fn gbnf_to_lark(gbnf: &str) -> Result<String, String> {
    let rules = Parser::new(gbnf).rules()?;
    let names = lark_names(&rules)?;
    let mut out = String::from("%llguidance {}\n\n");
    for rule in &rules {
        let body = match &rule.body {
            Node::Alt(alternatives) => alternatives
                .iter()
                .map(|a| emit(a, &names))
                .collect::<Vec<_>>()
                .join("\n    | "),
            body => emit(body, &names),
        };
        let _ = writeln!(out, "{}: {body}", names[&rule.name]);
    }
    Ok(out)
}

/// A GBNF expression.
#[derive(Debug, Clone)]
enum Node {
    Literal(String),
    /// `[...]` as inclusive ranges of characters, `[^...]` when negated.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `.`: any character.
    Any,
    Ref(String),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
    Seq(Vec<Node>),
    Alt(Vec<Node>),
}

impl Node {
    /// The node without one-element sequences and alternations.
    fn simplify(self) -> Node {
        match self {
            Node::Seq(nodes) => one_or(nodes, Node::Seq),
            Node::Alt(nodes) => one_or(nodes, Node::Alt),
            Node::Repeat { node, min, max } => Node::Repeat {
                node: Box::new(node.simplify()),
                min,
                max,
            },
            leaf => leaf,
        }
    }

    /// Whether every leaf is a literal, a class or a reference to a rule in `terminals`.
    fn is_terminal(&self, terminals: &HashSet<String>) -> bool {
        match self {
            Node::Literal(_) | Node::Class { .. } | Node::Any => true,
            Node::Ref(name) => terminals.contains(name),
            Node::Repeat { node, .. } => node.is_terminal(terminals),
            Node::Seq(nodes) | Node::Alt(nodes) => nodes.iter().all(|n| n.is_terminal(terminals)),
        }
    }
}

fn one_or(nodes: Vec<Node>, wrap: fn(Vec<Node>) -> Node) -> Node {
    let mut nodes: Vec<Node> = nodes.into_iter().map(Node::simplify).collect();
    if nodes.len() == 1 {
        nodes.pop().unwrap_or(Node::Seq(Vec::new()))
    } else {
        wrap(nodes)
    }
}

struct Rule {
    name: String,
    body: Node,
}

/// A recursive-descent parser of llama.cpp's GBNF (`common/grammar-parser` there).
struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Parser {
        Parser {
            chars: text.chars().collect(),
            pos: 0,
        }
    }

    fn rules(mut self) -> Result<Vec<Rule>, String> {
        let mut rules = Vec::new();
        self.skip_space(true);
        while self.peek().is_some() {
            let name = self.name()?;
            self.skip_space(false);
            self.expect("::=")?;
            self.skip_space(true);
            let body = self.alternatives(false)?.simplify();
            if !matches!(self.peek(), None | Some('\n' | '\r')) {
                return Err(self.error("expected the end of the rule"));
            }
            rules.push(Rule { name, body });
            self.skip_space(true);
        }
        Ok(rules)
    }

    fn alternatives(&mut self, nested: bool) -> Result<Node, String> {
        let mut alternatives = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            self.skip_space(true);
            alternatives.push(self.sequence(nested)?);
        }
        Ok(Node::Alt(alternatives))
    }

    fn sequence(&mut self, nested: bool) -> Result<Node, String> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            let node = match c {
                '"' => self.literal()?,
                '[' => self.class()?,
                '(' => {
                    self.pos += 1;
                    self.skip_space(true);
                    let inner = self.alternatives(true)?;
                    self.expect(")")?;
                    inner
                }
                '.' => {
                    self.pos += 1;
                    Node::Any
                }
                '<' | '!' => return Err(self.error("token references are not supported")),
                c if is_word_char(c) => Node::Ref(self.name()?),
                _ => break,
            };
            self.skip_space(nested);
            nodes.push(self.repetition(node)?);
            self.skip_space(nested);
        }
        Ok(Node::Seq(nodes))
    }

    fn repetition(&mut self, node: Node) -> Result<Node, String> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.pos += 1;
                self.skip_space(true);
                let min = self.int()?;
                self.skip_space(true);
                let max = if self.peek() == Some(',') {
                    self.pos += 1;
                    self.skip_space(true);
                    let max = match self.peek() {
                        Some(c) if c.is_ascii_digit() => Some(self.int()?),
                        _ => None,
                    };
                    self.skip_space(true);
                    max
                } else {
                    Some(min)
                };
                if self.peek() != Some('}') {
                    return Err(self.error("expected '}' to close the repetition"));
                }
                if max.is_some_and(|max| max < min) {
                    return Err(self.error("the repetition's maximum is below its minimum"));
                }
                (min, max)
            }
            _ => return Ok(node),
        };
        self.pos += 1;
        Ok(Node::Repeat {
            node: Box::new(node),
            min,
            max,
        })
    }

    fn literal(&mut self) -> Result<Node, String> {
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string literal")),
                Some('"') => break,
                Some(_) => text.push(self.char()?),
            }
        }
        self.pos += 1;
        Ok(Node::Literal(text))
    }

    fn class(&mut self) -> Result<Node, String> {
        self.pos += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated character class")),
                Some(']') => break,
                Some(_) => {}
            }
            let start = self.pos;
            let low = self.char()?;
            let high = if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                self.char()?
            } else {
                low
            };
            if high < low {
                self.pos = start;
                return Err(self.error("a character range ends before it starts"));
            }
            ranges.push((low, high));
        }
        self.pos += 1;
        if ranges.is_empty() {
            return Err(self.error("empty character class"));
        }
        Ok(Node::Class { negated, ranges })
    }

    /// One character of a literal or class, with llama.cpp's escapes.
    fn char(&mut self) -> Result<char, String> {
        let Some(c) = self.peek() else {
            return Err(self.error("unexpected end of the grammar"));
        };
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        let Some(escape) = self.peek() else {
            return Err(self.error("incomplete escape"));
        };
        self.pos += 1;
        let digits = match escape {
            'n' => return Ok('\n'),
            'r' => return Ok('\r'),
            't' => return Ok('\t'),
            '\\' | '"' | '[' | ']' => return Ok(escape),
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return Err(self.error(&format!("unknown escape '\\{escape}'"))),
        };
        let hex: String = self.chars[self.pos..].iter().take(digits).collect();
        let code = (hex.len() == digits)
            .then(|| u32::from_str_radix(&hex, 16).ok())
            .flatten()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error(&format!("invalid \\{escape} escape")))?;
        self.pos += digits;
        Ok(code)
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a rule name"));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn int(&mut self) -> Result<u32, String> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits: String = self.chars[start..self.pos].iter().collect();
        digits
            .parse()
            .map_err(|_| self.error("expected a repetition count"))
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        let end = self.pos + token.chars().count();
        if end <= self.chars.len() && self.chars[self.pos..end].iter().copied().eq(token.chars()) {
            self.pos = end;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{token}'")))
        }
    }

    /// Skips blanks and `#` comments, and line ends too when `newlines`.
    fn skip_space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.pos += 1,
                '\r' | '\n' if newlines => self.pos += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n' && c != '\r') {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn peek(&self) -> Option<char> {
        self.peek_at(0)
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn error(&self, what: &str) -> String {
        let line = 1 + self.chars[..self.pos.min(self.chars.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count();
        let near: String = self.chars[self.pos.min(self.chars.len())..]
            .iter()
            .take(20)
            .collect();
        format!("{what} at line {line}, before {near:?}")
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Each rule's Lark name: `root` is `start`, terminal rules uppercase, the others snake case.
fn lark_names(rules: &[Rule]) -> Result<HashMap<String, String>, String> {
    let defined: HashSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    if !defined.contains("root") {
        return Err("the grammar has no 'root' rule".into());
    }
    if defined.len() != rules.len() {
        return Err("a rule is defined twice; join its alternatives with '|'".into());
    }
    for rule in rules {
        if let Some(missing) = first_undefined(&rule.body, &defined) {
            return Err(format!(
                "rule '{}' uses undefined rule '{missing}'",
                rule.name
            ));
        }
    }
    // Terminals to a fixpoint: a rule is one when its body is; recursion never is (its own name starts outside).
    let mut terminals = HashSet::new();
    loop {
        let before = terminals.len();
        for rule in rules {
            if rule.name != "root" && rule.body.is_terminal(&terminals) {
                terminals.insert(rule.name.clone());
            }
        }
        if terminals.len() == before {
            break;
        }
    }
    let mut names = HashMap::new();
    let mut taken = HashSet::new();
    for rule in rules {
        let name = if rule.name == "root" {
            "start".to_string()
        } else {
            let snake = snake_case(&rule.name);
            if terminals.contains(&rule.name) {
                snake.to_uppercase()
            } else {
                snake
            }
        };
        if !taken.insert(name.clone()) {
            return Err(format!(
                "rule '{}' becomes '{name}' in Lark, which another rule already is; rename one",
                rule.name
            ));
        }
        names.insert(rule.name.clone(), name);
    }
    Ok(names)
}

fn first_undefined<'a>(node: &'a Node, defined: &HashSet<&str>) -> Option<&'a str> {
    match node {
        Node::Ref(name) => (!defined.contains(name.as_str())).then_some(name.as_str()),
        Node::Repeat { node, .. } => first_undefined(node, defined),
        Node::Seq(nodes) | Node::Alt(nodes) => {
            nodes.iter().find_map(|n| first_undefined(n, defined))
        }
        _ => None,
    }
}

/// `fooBar-baz` as `foo_bar_baz`, starting with a letter as Lark names must.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase();
        out.push(if c == '-' {
            '_'
        } else {
            c.to_ascii_lowercase()
        });
    }
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "g_");
    }
    out
}

/// The Lark text of one expression.
fn emit(node: &Node, names: &HashMap<String, String>) -> String {
    match node {
        Node::Literal(text) => lark_string(text),
        Node::Class { negated, ranges } => {
            let mut out = String::from(if *negated { "/[^" } else { "/[" });
            for &(low, high) in ranges {
                push_class_char(&mut out, low);
                if high != low {
                    out.push('-');
                    push_class_char(&mut out, high);
                }
            }
            out.push_str("]/");
            out
        }
        Node::Any => "/(?s:.)/".into(),
        Node::Ref(name) => names[name].clone(),
        Node::Repeat { node, min, max } => {
            let inner = match node.as_ref() {
                leaf @ (Node::Literal(_) | Node::Class { .. } | Node::Any | Node::Ref(_)) => {
                    emit(leaf, names)
                }
                other => format!("({})", emit(other, names)),
            };
            match (min, max) {
                (0, None) => format!("{inner}*"),
                (1, None) => format!("{inner}+"),
                (0, Some(1)) => format!("{inner}?"),
                (min, None) => format!("{inner}{{{min},}}"),
                (min, Some(max)) => format!("{inner}{{{min},{max}}}"),
            }
        }
        Node::Seq(nodes) if nodes.is_empty() => "\"\"".into(),
        Node::Seq(nodes) => nodes
            .iter()
            .map(|n| emit(n, names))
            .collect::<Vec<_>>()
            .join(" "),
        Node::Alt(nodes) => format!(
            "({})",
            nodes
                .iter()
                .map(|n| emit(n, names))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
    }
}

/// A Lark string literal (JSON string syntax, control characters escaped).
fn lark_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One class endpoint: letters and digits as themselves, everything else as `\x{..}` so no character is special.
fn push_class_char(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{:x}}}", c as u32);
    }
}
