//! llama.cpp's GBNF grammars, translated into the Lark dialect the constraint compiler reads.
//!
//! - [`gbnf_to_lark`]: the translator. It parses GBNF as llama.cpp does (rules
//!   `name ::= ...` starting at `root`, alternatives `|`, sequences, groups `( )`, strings with
//!   `\x`/`\u`/`\U`/`\t`/`\n`/`\r`/`\\`/`\"`/`\[`/`\]`/`\-` escapes, character classes `[a-z]`
//!   and `[^...]`, `.`, `* + ?`, `{m}`, `{m,}`, `{m,n}`, `#` comments, newlines inside groups
//!   and after `|`, tokens `<[id]>` / `<|special|>` / `!<[id]>`) and writes an equivalent Lark
//!   grammar.
//! - [`GbnfError`]: what is wrong with a GBNF source, with the line and column.
//! - [`crate::engine::constraint::Grammars::gbnf`] compiles the translation into a constraint.
//!
//! GBNF matches characters, one at a time, with no lexer; llguidance lexes greedily (a
//! terminal takes the longest run it can). So the translation keeps every character its own
//! lexeme: a string `"ab"` becomes `"a" "b"`, a class a one-character regex `/[a-z]/`, and
//! repetition and alternation stay in the (Earley) rules. No lexeme is then a prefix of
//! another, and the Lark grammar accepts exactly the strings the GBNF grammar does. Every group
//! and every repetition of more than one character becomes a rule of its own, so the Lark
//! grammar never nests (llguidance's parser caps nesting at 30).
//!
//! Bounds on hostile input: the source is at most [`MAX_GRAMMAR_BYTES`], groups nest at most
//! [`MAX_GBNF_DEPTH`] deep, at most [`MAX_GBNF_STACKED_REPEATS`] operators stack on one
//! element, and a repetition count is at most [`MAX_GBNF_REPEAT`] (llama.cpp's own limit); the
//! translation is linear in the source, and the compiler's limits
//! ([`crate::engine::constraint::limits`]) bound the rest.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fmt::Write as _;

use crate::engine::constraint::MAX_GRAMMAR_BYTES;

/// The deepest groups `( ... )` may nest.
pub const MAX_GBNF_DEPTH: usize = 32;

/// The most repetition operators that may apply one over another (`"a"+?` is two).
pub const MAX_GBNF_STACKED_REPEATS: usize = 3;

/// The largest count in `{m}`, `{m,}` and `{m,n}` (llama.cpp's `MAX_REPETITION_THRESHOLD`).
pub const MAX_GBNF_REPEAT: u32 = 2000;

/// What is wrong with a GBNF grammar, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GbnfError {
    /// The line (from 1) and column (in characters, from 1) of the fault; `None` for faults of
    /// the whole grammar (no `root` rule, too big).
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for GbnfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, column)) => write!(f, "line {line}, column {column}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for GbnfError {}

/// `src`, a GBNF grammar, as a Lark grammar for [`crate::engine::constraint::Grammars::lark`]
/// that accepts the same strings (see the module docs). Rule names are kept where Lark allows
/// them (lower case, `-` as `_`), the start rule is `start: root`.
pub fn gbnf_to_lark(src: &str) -> Result<String, GbnfError> {
    if src.len() > MAX_GRAMMAR_BYTES {
        return Err(GbnfError {
            at: None,
            message: format!(
                "the grammar is {} bytes; the limit is {MAX_GRAMMAR_BYTES}",
                src.len()
            ),
        });
    }
    let mut parser = Parser::new(src);
    let rules = parser.grammar()?;
    Writer::new(&rules, parser.lines)?.write(&rules)
}

/// One parsed element of a sequence.
#[derive(Debug, Clone)]
enum Node {
    /// A string literal's characters (possibly none).
    Chars(Vec<char>),
    /// A character class: inclusive ranges, or any character outside them when negated.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `.`: any character.
    Any,
    /// A reference to a rule, with where it is (for "not defined").
    Ref { name: String, at: usize },
    /// A token, `<...>` as written (`<[123]>`, `<|im_end|>`), negated by a leading `!`.
    Token { negated: bool, text: String },
    /// A group of alternatives.
    Group(Vec<Vec<Node>>),
    /// `node{min,max}` (`max` `None`: unbounded).
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

/// One rule `name ::= alternatives`.
#[derive(Debug)]
struct Rule {
    name: String,
    at: usize,
    alts: Vec<Vec<Node>>,
}

/// A recursive-descent parser following llama.cpp's (`llama-grammar.cpp`): the same places
/// for blank space, newlines and comments, the same escapes.
struct Parser {
    chars: Vec<char>,
    pos: usize,
    lines: Lines,
}

/// Where each line starts (character indices), to turn a position into a line and column.
struct Lines(Vec<usize>);

impl Lines {
    /// Line and column (both from 1) of character index `pos`.
    fn at(&self, pos: usize) -> (usize, usize) {
        let line = self.0.partition_point(|&start| start <= pos);
        (line, pos - self.0[line - 1] + 1)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

fn describe(c: Option<char>) -> String {
    match c {
        None => "the end of the grammar".into(),
        Some('\n') | Some('\r') => "a line break".into(),
        Some(c) if c.is_control() => format!("the control character U+{:04X}", c as u32),
        Some(c) => format!("'{c}'"),
    }
}

impl Parser {
    fn new(src: &str) -> Parser {
        let chars: Vec<char> = src.chars().collect();
        let mut starts = vec![0];
        starts.extend(
            chars
                .iter()
                .enumerate()
                .filter(|(_, &c)| c == '\n')
                .map(|(i, _)| i + 1),
        );
        Parser {
            chars,
            pos: 0,
            lines: Lines(starts),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.pos + k).copied()
    }

    /// Line and column (both from 1) of character index `pos`.
    fn location(&self, pos: usize) -> (usize, usize) {
        self.lines.at(pos)
    }

    fn error_at(&self, pos: usize, message: impl Into<String>) -> GbnfError {
        GbnfError {
            at: Some(self.location(pos)),
            message: message.into(),
        }
    }

    fn error(&self, message: impl Into<String>) -> GbnfError {
        self.error_at(self.pos, message)
    }

    /// Skips blanks and `#` comments, and line breaks when `newline_ok`.
    fn space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.pos += 1,
                '\r' | '\n' if newline_ok => self.pos += 1,
                '#' => {
                    while !matches!(self.peek(), None | Some('\r') | Some('\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<String, GbnfError> {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error(format!(
                "expected a rule name (letters, digits, '-'), found {}",
                describe(self.peek())
            )));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn grammar(&mut self) -> Result<Vec<Rule>, GbnfError> {
        let mut rules = Vec::new();
        self.space(true);
        while self.peek().is_some() {
            rules.push(self.rule()?);
        }
        Ok(rules)
    }

    fn rule(&mut self) -> Result<Rule, GbnfError> {
        let at = self.pos;
        let name = self.name()?;
        self.space(false);
        if !(self.peek() == Some(':')
            && self.peek_at(1) == Some(':')
            && self.peek_at(2) == Some('='))
        {
            return Err(self.error(format!(
                "expected '::=' after the rule name '{name}', found {}",
                describe(self.peek())
            )));
        }
        self.pos += 3;
        self.space(true);
        let alts = self.alternates(false, 0)?;
        match self.peek() {
            None => {}
            Some('\n') => self.pos += 1,
            Some('\r') => {
                self.pos += 1;
                if self.peek() == Some('\n') {
                    self.pos += 1;
                }
            }
            Some(c) => {
                let hint = if c == ')' {
                    " (a ')' without its '(')"
                } else {
                    ""
                };
                return Err(self.error(format!(
                    "expected a line break or the end of the grammar after rule '{name}', found {}{hint}",
                    describe(Some(c))
                )));
            }
        }
        self.space(true);
        Ok(Rule { name, at, alts })
    }

    fn alternates(&mut self, nested: bool, depth: usize) -> Result<Vec<Vec<Node>>, GbnfError> {
        let mut alts = vec![self.sequence(nested, depth)?];
        while self.peek() == Some('|') {
            self.pos += 1;
            self.space(true);
            alts.push(self.sequence(nested, depth)?);
        }
        Ok(alts)
    }

    /// One character of a string or class, escapes decoded.
    fn char(&mut self) -> Result<char, GbnfError> {
        let start = self.pos;
        let Some(c) = self.peek() else {
            return Err(self.error("unexpected end of the grammar"));
        };
        self.pos += 1;
        if c != '\\' {
            return Ok(c);
        }
        let Some(e) = self.peek() else {
            return Err(self.error("unexpected end of the grammar after '\\'"));
        };
        self.pos += 1;
        let digits = match e {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            't' => return Ok('\t'),
            'r' => return Ok('\r'),
            'n' => return Ok('\n'),
            '\\' | '"' | '[' | ']' | '-' => return Ok(e),
            _ => {
                const KNOWN: &str = r#"\x \u \U \t \r \n \\ \" \[ \] \-"#;
                let message = format!("unknown escape '\\{e}' (known: {KNOWN})");
                return Err(self.error_at(start, message));
            }
        };
        let mut value: u32 = 0;
        for _ in 0..digits {
            match self.peek().and_then(|d| d.to_digit(16)) {
                Some(d) => {
                    value = (value << 4) | d;
                    self.pos += 1;
                }
                None => {
                    return Err(self.error_at(start, format!("'\\{e}' needs {digits} hex digits")))
                }
            }
        }
        char::from_u32(value).ok_or_else(|| {
            self.error_at(
                start,
                format!("'\\{e}' escape U+{value:X} is not a Unicode scalar value"),
            )
        })
    }

    fn string(&mut self) -> Result<Node, GbnfError> {
        let open = self.pos;
        self.pos += 1;
        let mut chars = Vec::new();
        loop {
            match self.peek() {
                None => {
                    let (l, c) = self.location(open);
                    return Err(self.error(format!(
                        "unterminated string (opened at line {l}, column {c})"
                    )));
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(Node::Chars(chars));
                }
                Some(_) => chars.push(self.char()?),
            }
        }
    }

    fn class(&mut self) -> Result<Node, GbnfError> {
        let open = self.pos;
        self.pos += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            match self.peek() {
                None => {
                    let (l, c) = self.location(open);
                    return Err(self.error(format!(
                        "unterminated character class (opened at line {l}, column {c})"
                    )));
                }
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some(_) => {
                    let from_pos = self.pos;
                    let lo = self.char()?;
                    let mut hi = lo;
                    if self.peek() == Some('-') && self.peek_at(1) != Some(']') {
                        self.pos += 1;
                        if self.peek().is_none() {
                            return Err(self.error("unexpected end of the grammar in a range"));
                        }
                        hi = self.char()?;
                        if hi < lo {
                            return Err(self.error_at(
                                from_pos,
                                format!(
                                    "the range U+{:04X}-U+{:04X} runs backwards",
                                    lo as u32, hi as u32
                                ),
                            ));
                        }
                    }
                    ranges.push((lo, hi));
                }
            }
        }
        match (negated, ranges.is_empty()) {
            (true, true) => Ok(Node::Any),
            (false, true) => Err(self.error_at(open, "the character class '[]' is empty")),
            _ => Ok(Node::Class { negated, ranges }),
        }
    }

    fn token(&mut self) -> Result<Node, GbnfError> {
        let at = self.pos;
        let negated = self.peek() == Some('!');
        if negated {
            self.pos += 1;
            if self.peek() != Some('<') {
                return Err(self.error(format!(
                    "expected '<' after '!' (a negated token, as !<[123]>), found {}",
                    describe(self.peek())
                )));
            }
        }
        let open = self.pos;
        self.pos += 1;
        while let Some(c) = self.peek() {
            if c == '>' {
                break;
            }
            if c == '<' || c.is_whitespace() {
                return Err(self.error(format!(
                    "a token '<...>' cannot contain {}",
                    describe(Some(c))
                )));
            }
            self.pos += 1;
        }
        if self.peek() != Some('>') {
            return Err(self.error_at(open, "unterminated token '<...>'"));
        }
        let text: String = self.chars[open + 1..self.pos].iter().collect();
        self.pos += 1;
        if text.is_empty() {
            return Err(self.error_at(open, "the token '<>' is empty"));
        }
        let numeric = text.len() > 2
            && text.starts_with('[')
            && text.ends_with(']')
            && text[1..text.len() - 1].bytes().all(|b| b.is_ascii_digit());
        if negated && !numeric {
            return Err(self.error_at(
                at,
                format!("'!<{text}>' is not supported; negate a token by its id, as !<[123]>"),
            ));
        }
        Ok(Node::Token { negated, text })
    }

    fn count(&mut self) -> Result<u32, GbnfError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.error(format!(
                "expected a repetition count, found {}",
                describe(self.peek())
            )));
        }
        let digits: String = self.chars[start..self.pos].iter().collect();
        match digits.parse::<u32>() {
            Ok(n) if n <= MAX_GBNF_REPEAT => Ok(n),
            _ => Err(self.error_at(
                start,
                format!("the repetition count {digits} is over the limit of {MAX_GBNF_REPEAT}"),
            )),
        }
    }

    /// `{m}`, `{m,}` or `{m,n}`, the `{` at `self.pos`.
    fn braces(&mut self, nested: bool) -> Result<(u32, Option<u32>), GbnfError> {
        let open = self.pos;
        self.pos += 1;
        self.space(nested);
        let min = self.count()?;
        self.space(nested);
        let max = match self.peek() {
            Some('}') => Some(min),
            Some(',') => {
                self.pos += 1;
                self.space(nested);
                let max = if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    let m = self.count()?;
                    self.space(nested);
                    Some(m)
                } else {
                    None
                };
                if self.peek() != Some('}') {
                    return Err(self.error(format!(
                        "expected '}}' to close the repetition, found {}",
                        describe(self.peek())
                    )));
                }
                max
            }
            c => {
                return Err(self.error(format!(
                    "expected ',' or '}}' in the repetition, found {}",
                    describe(c)
                )))
            }
        };
        self.pos += 1;
        if let Some(max) = max {
            if max < min {
                return Err(self.error_at(
                    open,
                    format!("the repetition {{{min},{max}}} has its maximum below its minimum"),
                ));
            }
        }
        Ok((min, max))
    }

    fn sequence(&mut self, nested: bool, depth: usize) -> Result<Vec<Node>, GbnfError> {
        let mut seq: Vec<Node> = Vec::new();
        while let Some(c) = self.peek() {
            let op_pos = self.pos;
            let repeat = match c {
                '"' => {
                    seq.push(self.string()?);
                    None
                }
                '[' => {
                    seq.push(self.class()?);
                    None
                }
                '<' | '!' => {
                    seq.push(self.token()?);
                    None
                }
                '.' => {
                    self.pos += 1;
                    seq.push(Node::Any);
                    None
                }
                '(' => {
                    if depth >= MAX_GBNF_DEPTH {
                        return Err(self.error(format!(
                            "groups nest deeper than the limit of {MAX_GBNF_DEPTH}"
                        )));
                    }
                    self.pos += 1;
                    self.space(true);
                    let alts = self.alternates(true, depth + 1)?;
                    if self.peek() != Some(')') {
                        let (l, c) = self.location(op_pos);
                        return Err(self.error(format!(
                            "expected ')' to close the group opened at line {l}, column {c}, found {}",
                            describe(self.peek())
                        )));
                    }
                    self.pos += 1;
                    seq.push(Node::Group(alts));
                    None
                }
                '*' => {
                    self.pos += 1;
                    Some((0, None))
                }
                '+' => {
                    self.pos += 1;
                    Some((1, None))
                }
                '?' => {
                    self.pos += 1;
                    Some((0, Some(1)))
                }
                '{' => Some(self.braces(nested)?),
                c if is_word_char(c) => {
                    let at = self.pos;
                    let name = self.name()?;
                    seq.push(Node::Ref { name, at });
                    None
                }
                _ => break,
            };
            if let Some((min, max)) = repeat {
                let Some(last) = seq.pop() else {
                    return Err(
                        self.error_at(op_pos, format!("'{c}' has nothing before it to repeat"))
                    );
                };
                let mut stacked = 1;
                let mut inner = &last;
                while let Node::Repeat { node, .. } = inner {
                    stacked += 1;
                    inner = node;
                }
                if stacked > MAX_GBNF_STACKED_REPEATS {
                    return Err(self.error_at(
                        op_pos,
                        format!(
                            "more than {MAX_GBNF_STACKED_REPEATS} repetition operators apply to one element"
                        ),
                    ));
                }
                seq.push(Node::Repeat {
                    node: Box::new(last),
                    min,
                    max,
                });
            }
            self.space(nested);
        }
        Ok(seq)
    }
}

/// Writes the Lark grammar: one line per rule, the GBNF rules first (in their order), then
/// the rules made for groups and repetitions.
struct Writer {
    /// GBNF rule name -> Lark rule name.
    names: HashMap<String, String>,
    /// Every Lark rule name taken.
    taken: Taken,
    /// The rules made for groups and repetitions, written after the GBNF rules.
    extra: String,
    lines: Lines,
}

/// The Lark rule names in use, and for each stem the next suffix to try (so that naming
/// thousands of rules after one stem stays linear).
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    next: HashMap<String, usize>,
}

/// A Lark rule name for `base` (lower case, `_` for `-`, starting with a letter) not in
/// `taken`, which it joins.
fn fresh_name(taken: &mut Taken, base: &str) -> String {
    let mut stem: String = base
        .chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    if !stem.starts_with(|c: char| c.is_ascii_lowercase()) {
        stem.insert_str(0, "r_");
    }
    let mut name = stem.clone();
    let mut n = taken.next.get(&stem).copied().unwrap_or(2);
    while taken.names.contains(&name) {
        name = format!("{stem}_{n}");
        n += 1;
    }
    taken.next.insert(stem, n);
    taken.names.insert(name.clone());
    name
}

/// Whether `node` matches only the empty string in any case (`""`, `""*`, `x{0}`).
fn matches_nothing(node: &Node) -> bool {
    match node {
        Node::Chars(chars) => chars.is_empty(),
        Node::Repeat { max: Some(0), .. } => true,
        Node::Repeat { node, .. } => matches_nothing(node),
        _ => false,
    }
}

/// `c` as a Lark (JSON-syntax) string literal.
fn literal(c: char) -> String {
    match c {
        '"' => "\"\\\"\"".into(),
        '\\' => "\"\\\\\"".into(),
        c if (c as u32) < 0x20 || c as u32 == 0x7F => format!("\"\\u{:04x}\"", c as u32),
        c => format!("\"{c}\""),
    }
}

/// `c` inside a Lark `/regex/`: always escaped, so no character of the grammar can end or
/// change the regex.
fn regex_char(c: char) -> String {
    format!("\\x{{{:X}}}", c as u32)
}

impl Writer {
    fn new(rules: &[Rule], lines: Lines) -> Result<Writer, GbnfError> {
        if rules.is_empty() {
            return Err(GbnfError {
                at: None,
                message: "the grammar defines no rules (it needs a 'root' rule)".into(),
            });
        }
        let mut taken = Taken::default();
        taken.names.insert("start".to_string());
        let mut names = HashMap::new();
        let mut first: HashMap<&str, (usize, usize)> = HashMap::new();
        for r in rules {
            if let Some((l, c)) = first.get(r.name.as_str()) {
                return Err(GbnfError {
                    at: Some(lines.at(r.at)),
                    message: format!(
                        "the rule '{}' is defined twice (first at line {l}, column {c})",
                        r.name
                    ),
                });
            }
            first.insert(&r.name, lines.at(r.at));
            let lark = fresh_name(&mut taken, &r.name);
            names.insert(r.name.clone(), lark);
        }
        if !names.contains_key("root") {
            return Err(GbnfError {
                at: None,
                message: "the grammar has no 'root' rule (the rule it starts from)".into(),
            });
        }
        Ok(Writer {
            names,
            taken,
            extra: String::new(),
            lines,
        })
    }

    fn write(mut self, rules: &[Rule]) -> Result<String, GbnfError> {
        let mut out = format!("start: {}\n", self.names["root"]);
        for r in rules {
            let name = self.names[&r.name].clone();
            let body = self.alternatives(&name, &r.alts)?;
            let _ = writeln!(out, "{name}: {body}");
        }
        out.push_str(&self.extra);
        Ok(out)
    }

    fn alternatives(&mut self, owner: &str, alts: &[Vec<Node>]) -> Result<String, GbnfError> {
        let mut parts = Vec::with_capacity(alts.len());
        for seq in alts {
            let mut items = Vec::with_capacity(seq.len());
            for node in seq {
                let item = self.item(owner, node)?;
                if !item.is_empty() {
                    items.push(item);
                }
            }
            parts.push(items.join(" "));
        }
        Ok(parts.join(" | "))
    }

    /// A rule of its own for `alts`, named after `owner`; returns its name.
    fn new_rule(&mut self, owner: &str, alts: &[Vec<Node>]) -> Result<String, GbnfError> {
        let name = fresh_name(&mut self.taken, &format!("{owner}_g"));
        let body = self.alternatives(&name, alts)?;
        let _ = writeln!(self.extra, "{name}: {body}");
        Ok(name)
    }

    /// `node` as items of a sequence (empty for the empty string).
    fn item(&mut self, owner: &str, node: &Node) -> Result<String, GbnfError> {
        match node {
            // the empty string, however often, and anything zero times, are nothing
            n if matches_nothing(n) => Ok(String::new()),
            Node::Chars(chars) => Ok(chars
                .iter()
                .map(|&c| literal(c))
                .collect::<Vec<_>>()
                .join(" ")),
            Node::Repeat { node, min, max } => {
                let op = match (*min, *max) {
                    (0, None) => "*".to_string(),
                    (1, None) => "+".to_string(),
                    (0, Some(1)) => "?".to_string(),
                    (m, None) => format!("{{{m},}}"),
                    (m, Some(n)) if m == n => format!("{{{m}}}"),
                    (m, Some(n)) => format!("{{{m},{n}}}"),
                };
                let atom = self.atom(owner, node)?;
                Ok(format!("{atom}{op}"))
            }
            other => self.atom(owner, other),
        }
    }

    /// `node` as one Lark atom (a literal, regex, token or rule name) that an operator can
    /// follow.
    fn atom(&mut self, owner: &str, node: &Node) -> Result<String, GbnfError> {
        match node {
            Node::Chars(chars) if chars.len() == 1 => Ok(literal(chars[0])),
            Node::Chars(_) | Node::Repeat { .. } => {
                self.new_rule(owner, std::slice::from_ref(&vec![node.clone()]))
            }
            Node::Class { negated, ranges } => {
                let mut re = String::from(if *negated { "/[^" } else { "/[" });
                for &(lo, hi) in ranges {
                    re.push_str(&regex_char(lo));
                    if hi != lo {
                        re.push('-');
                        re.push_str(&regex_char(hi));
                    }
                }
                re.push_str("]/");
                Ok(re)
            }
            Node::Any => Ok("/(?s:.)/".into()),
            Node::Ref { name, at } => self.names.get(name).cloned().ok_or_else(|| GbnfError {
                at: Some(self.lines.at(*at)),
                message: format!("the rule '{name}' is used but not defined"),
            }),
            Node::Token { negated, text } => Ok(if *negated {
                format!("<[^{}>", &text[1..])
            } else {
                format!("<{text}>")
            }),
            Node::Group(alts) => match alts.as_slice() {
                // a group of one element needs no rule of its own
                [seq]
                    if seq.len() == 1
                        && !matches!(seq[0], Node::Chars(_) | Node::Repeat { .. }) =>
                {
                    self.atom(owner, &seq[0])
                }
                _ => self.new_rule(owner, alts),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lark(src: &str) -> String {
        gbnf_to_lark(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
    }

    fn err(src: &str) -> GbnfError {
        match gbnf_to_lark(src) {
            Ok(l) => panic!("{src:?} translated to {l:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn strings_become_one_lexeme_per_character() {
        assert_eq!(lark("root ::= \"ab\""), "start: root\nroot: \"a\" \"b\"\n");
        // escapes: hex, unicode, the named ones, and characters JSON must escape
        assert_eq!(
            lark(r#"root ::= "\x41\u00e9\U0001F600\t\n\r\\\"\[\]\-""#),
            "start: root\nroot: \"A\" \"é\" \"😀\" \"\\u0009\" \"\\u000a\" \"\\u000d\" \"\\\\\" \"\\\"\" \"[\" \"]\" \"-\"\n"
        );
        // the empty string is the empty sequence
        assert_eq!(lark("root ::= \"\""), "start: root\nroot: \n");
        assert_eq!(
            lark("root ::= \"\\x7f\""),
            "start: root\nroot: \"\\u007f\"\n"
        );
    }

    #[test]
    fn classes_and_dot_are_escaped_regexes() {
        assert_eq!(
            lark("root ::= [a-z_] [^\"\\\\\\n] . [/]"),
            "start: root\nroot: /[\\x{61}-\\x{7A}\\x{5F}]/ /[^\\x{22}\\x{5C}\\x{A}]/ /(?s:.)/ /[\\x{2F}]/\n"
        );
        // a '-' first or last is itself; `[^]` is any character
        assert_eq!(
            lark("root ::= [-a-]"),
            "start: root\nroot: /[\\x{2D}\\x{61}\\x{2D}]/\n"
        );
        assert_eq!(lark("root ::= [^]"), "start: root\nroot: /(?s:.)/\n");
    }

    #[test]
    fn repetitions_alternatives_and_groups() {
        assert_eq!(
            lark("root ::= \"a\"{5,5} \"b\"{2,} \"c\"{1,3} [0-9]* x+ x? \"\"{0,4} x{0}\nx ::= \"x\""),
            "start: root\nroot: \"a\"{5} \"b\"{2,} \"c\"{1,3} /[\\x{30}-\\x{39}]/* x+ x?\nx: \"x\"\n"
        );
        // a repeated string or group is a rule of its own; a repeated repeat too
        assert_eq!(
            lark("root ::= | \"ab\"* (\"c\" | d-e)+\nd-e ::= (d-e)"),
            "start: root\nroot:  | root_g* root_g_2+\nd_e: d_e\nroot_g: \"a\" \"b\"\nroot_g_2: \"c\" | d_e\n"
        );
        assert_eq!(
            lark("root ::= \"a\"+?"),
            "start: root\nroot: root_g?\nroot_g: \"a\"+\n"
        );
    }

    #[test]
    fn names_are_made_lark_legal_and_distinct() {
        let l = lark("root ::= Foo-bar foo-bar 9x start\nFoo-bar ::= \"a\"\nfoo-bar ::= \"b\"\n9x ::= \"c\"\nstart ::= \"d\"");
        assert!(
            l.starts_with("start: root\nroot: foo_bar foo_bar_2 r_9x start_2\n"),
            "{l}"
        );
        assert!(l.contains("\nfoo_bar: \"a\"\n"), "{l}");
        assert!(l.contains("\nfoo_bar_2: \"b\"\n"), "{l}");
        assert!(l.contains("\nr_9x: \"c\"\n"), "{l}");
        assert!(l.contains("\nstart_2: \"d\"\n"), "{l}");
        // `foo_bar` is not a GBNF name ('_' is not a word character): a parse error
        let e = err("root ::= foo_bar\nfoo ::= \"a\"");
        assert_eq!(e.at, Some((1, 13)), "{e}");
    }

    #[test]
    fn comments_newlines_and_layout() {
        let src = "# a comment\nroot ::= ( # open\n  \"a\"\n  | \"b\" ) |\n  \"c\" # tail\n\r\nother ::= root\n";
        assert_eq!(
            lark(src),
            "start: root\nroot: root_g | \"c\"\nother: root\nroot_g: \"a\" | \"b\"\n"
        );
        // a newline ends a rule outside groups
        let e = err("root ::= \"a\"\n  \"b\"");
        assert_eq!(e.at, Some((2, 3)), "{e}");
    }

    #[test]
    fn tokens_pass_through() {
        assert_eq!(
            lark("root ::= <[123]> !<[7]> <|im_end|>"),
            "start: root\nroot: <[123]> <[^7]> <|im_end|>\n"
        );
        assert!(err("root ::= !<think>").message.contains("!<[123]>"));
        assert!(err("root ::= <a b>").message.contains("cannot contain"));
    }

    #[test]
    fn errors_name_line_column_and_fault() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            (
                "root ::= \"abc",
                (1, 14),
                "unterminated string (opened at line 1, column 10)",
            ),
            ("root ::= [abc", (1, 14), "unterminated character class"),
            ("root ::= x\n", (1, 10), "'x' is used but not defined"),
            ("root ::= \"a\"\nroot ::= \"b\"", (2, 1), "defined twice"),
            ("root := \"a\"", (1, 6), "expected '::='"),
            ("root ::= (\"a\"", (1, 14), "expected ')'"),
            ("root ::= \"a\")", (1, 13), "without its '('"),
            ("root ::= *", (1, 10), "nothing before it"),
            ("root ::= \"a\"{3,1}", (1, 13), "maximum below its minimum"),
            ("root ::= \"a\"{2001}", (1, 14), "over the limit of 2000"),
            (
                "root ::= \"a\"{99999999999999999999}",
                (1, 14),
                "over the limit",
            ),
            ("root ::= \"a\"{x}", (1, 14), "expected a repetition count"),
            ("root ::= \"a\"{1 2}", (1, 16), "expected ',' or '}'"),
            ("root ::= \"\\q\"", (1, 11), "unknown escape '\\q'"),
            ("root ::= \"\\x4\"", (1, 11), "needs 2 hex digits"),
            (
                "root ::= \"\\uD800\"",
                (1, 11),
                "not a Unicode scalar value",
            ),
            ("root ::= [z-a]", (1, 11), "runs backwards"),
            ("root ::= []", (1, 10), "is empty"),
            ("\n\nroot ::= \"a\" ~", (3, 14), "expected a line break"),
        ];
        for (src, at, want) in cases {
            let e = err(src);
            assert_eq!(e.at, Some(*at), "{src:?}: {e}");
            assert!(e.message.contains(want), "{src:?}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("line {}, column {}: ", at.0, at.1)));
        }
        assert!(err("").message.contains("no rules"));
        assert!(err("  # only a comment\n").message.contains("no rules"));
        assert!(err("other ::= \"a\"").message.contains("no 'root' rule"));
    }

    #[test]
    fn hostile_input_is_bounded() {
        // nesting: at the limit it translates, past it it is refused (no stack overflow)
        let ok = format!(
            "root ::= {}\"a\"{}",
            "(".repeat(MAX_GBNF_DEPTH),
            ")".repeat(MAX_GBNF_DEPTH)
        );
        assert!(gbnf_to_lark(&ok).is_ok());
        let deep = format!("root ::= {}\"a\"", "(".repeat(100_000));
        assert!(err(&deep).message.contains("nest deeper than the limit"));
        let big = format!("root ::= \"{}\"", "a".repeat(MAX_GRAMMAR_BYTES));
        let e = err(&big);
        assert!(e.at.is_none() && e.message.contains("limit"), "{e}");
        // stacked postfix operators: a few translate, a long chain is refused (no deep
        // recursion in the writer)
        assert!(gbnf_to_lark("root ::= \"a\"*+?").is_ok());
        let ops = format!("root ::= \"a\"{}", "*".repeat(100_000));
        assert!(err(&ops).message.contains("repetition operators"));
        // many groups under one rule: names stay linear
        let groups = format!("root ::= {}", "(\"a\" | \"b\") ".repeat(20_000));
        assert_eq!(gbnf_to_lark(&groups).unwrap().lines().count(), 20_002);
        // arbitrary bytes never panic
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = "root::= \"[]()|*+?{},.-^\\xu0aZ#\n<>!".chars().collect();
        for _ in 0..2000 {
            let mut s = String::from("root ::= ");
            for _ in 0..40 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = gbnf_to_lark(&s);
        }
    }
}
