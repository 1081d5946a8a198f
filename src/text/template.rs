//! The model's own chat template: the Jinja program a model ships (GGUF
//! `tokenizer.chat_template`, `chat_template.jinja` or `tokenizer_config.json` beside a Hugging
//! Face model) that turns a list of messages, and the tools on offer, into the prompt text.
//!
//! - [`ChatTemplate`]: a compiled template with the model's `bos_token`/`eos_token`, where it came
//!   from ([`TemplateOrigin`]) and the tool-call format it teaches ([`ToolCallFormat`]). Immutable,
//!   `Send + Sync`: one is shared by every request.
//! - [`TemplateError`]: every failure (a file that cannot be read, a template that does not
//!   compile, one that raises, loops or grows past its budget), naming the template at fault.
//!
//! Rendering follows transformers' `apply_chat_template`: Jinja with `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python's string and dict methods (minijinja-contrib's
//! `pycompat`), `raise_exception(msg)`, `strftime_now(format)` (the UTC time now, as transformers gives
//! templates that print today's date; llama.cpp's `date_string` and `datetime` are set too),
//! and `tojson` as `json.dumps(x, ensure_ascii=False)`
//! (separators `", "` and `": "`, keys in their given order, `indent`, `separators`,
//! `sort_keys`). Values print as Python prints them (`None`, `True`, `1.0`, `1e+16`).
//! One departure, llama.cpp's: a variable that neither the template nor the caller sets, added
//! to a string with `+`, reads as the empty string where Jinja raises (FireFunction v2's
//! template adds an unset `functions` to its prompt); a render Jinja accepts is unchanged, at
//! most [`MAX_EMPTIED`] variables per render are read so, and anything else done with an
//! undefined value stays an error.
//!
//! Templates read from files are untrusted: each render runs on a fuel budget
//! ([`RENDER_FUEL`], which bounds both the steps taken and the bytes produced), recursion is
//! capped at [`RECURSION_LIMIT`], and a template's source at [`MAX_TEMPLATE_BYTES`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use minijinja::value::{Serde, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

pub use super::pyvalue::py_float;
use super::pyvalue::{py_str, tojson};

/// The name the template is compiled under (it appears in minijinja's error locations).
const NAME: &str = "chat_template";

/// Fuel per render: about this many VM steps, or 64 times as many bytes of values and
/// output (so at most about 128 MiB). Measured: Qwen2.5's, Qwen3's and Qwen3-Coder's templates
/// render 8000 messages with tools (a 1.8 MB prompt) within half of it, and an endless loop or
/// a string doubled without end runs out in about 0.1 s.
pub const RENDER_FUEL: u64 = 2_000_000;

/// Nesting depth of macro calls, loops and includes a template may reach.
pub const RECURSION_LIMIT: usize = 100;

/// The largest template source accepted (real ones are under 20 KiB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// How many unset variables one render may read as empty where they are added to a string
/// (each costs a render again; real templates have one, FireFunction v2's `functions`).
pub const MAX_EMPTIED: usize = 8;

/// Variables every render sets; extra variables may not use these names.
const RESERVED: [&str; 5] = [
    "messages",
    "tools",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
];

/// The template used when a model ships none: ChatML as Qwen2.5 renders it (its default system
/// prompt when the conversation has none; tools in `<tools>` and calls as `<tool_call>` JSON).
const CHATML: &str = r#"
{%- if messages and messages[0].role == 'system' %}
    {%- set system = messages[0].content %}
{%- else %}
    {%- set system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{%- endif %}
{{- '<|im_start|>system\n' ~ system }}
{%- if tools %}
    {{- '\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' }}
    {%- for tool in tools %}
        {{- '\n' ~ tool | tojson }}
    {%- endfor %}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n' }}
    {{- '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\n' ~ message.content }}
        {%- endif %}
        {%- for call in message.tool_calls %}
            {%- set f = call.function if call.function is defined else call %}
            {{- '\n<tool_call>\n{"name": "' ~ f.name ~ '", "arguments": ' }}
            {{- f.arguments if f.arguments is string else f.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' ~ (message.content if message.content is not none else '') ~ '\n</tool_response>' }}
        {%- if loop.last or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' ~ message.role ~ '\n' ~ (message.content if message.content is not none else '') ~ '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// Where a chat template came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// A GGUF file's `tokenizer.chat_template`.
    Gguf(PathBuf),
    /// `chat_template.jinja` beside a Hugging Face model.
    ChatTemplateJinja(PathBuf),
    /// The `chat_template` of a Hugging Face model's `tokenizer_config.json`.
    TokenizerConfig(PathBuf),
    /// A file named on the command line (`--chat-template-file`).
    File(PathBuf),
    /// Given as text by the caller (a test, a library user).
    Source,
    /// The built-in ChatML template, for a model without one.
    ChatMl,
}

impl TemplateOrigin {
    /// A one-word name: `gguf`, `chat_template.jinja`, `tokenizer_config.json`, `file`,
    /// `source` or `chatml`.
    pub fn kind(&self) -> &'static str {
        match self {
            TemplateOrigin::Gguf(_) => "gguf",
            TemplateOrigin::ChatTemplateJinja(_) => "chat_template.jinja",
            TemplateOrigin::TokenizerConfig(_) => "tokenizer_config.json",
            TemplateOrigin::File(_) => "file",
            TemplateOrigin::Source => "source",
            TemplateOrigin::ChatMl => "chatml",
        }
    }
}

impl fmt::Display for TemplateOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateOrigin::Gguf(p) => write!(f, "{} (GGUF tokenizer.chat_template)", p.display()),
            TemplateOrigin::ChatTemplateJinja(p) | TemplateOrigin::File(p) => {
                write!(f, "{}", p.display())
            }
            TemplateOrigin::TokenizerConfig(p) => write!(f, "{} (chat_template)", p.display()),
            TemplateOrigin::Source => f.write_str("the given chat template"),
            TemplateOrigin::ChatMl => {
                f.write_str("the built-in ChatML template (the model has no chat template)")
            }
        }
    }
}

/// How the template teaches the model to call a tool, seen in its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// Hermes-style JSON, as Qwen2.5 and Qwen3 write it:
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
    HermesJson,
    /// Qwen3-Coder's XML: `<tool_call>\n<function=NAME>\n<parameter=P>\nvalue\n</parameter>\n
    /// </function>\n</tool_call>`.
    Qwen3CoderXml,
    /// Llama 3.1, 3.2 and 3.3's JSON, a whole answer with no tag:
    /// `{"name": ..., "parameters": {...}}` (read with an optional `"type": "function"` before
    /// the name), and 3.1's built-in calls `<|python_tag|>NAME.call(KEY=VALUE, ...)`.
    Llama3Json,
    /// The template does not mention tool calls.
    None,
}

impl ToolCallFormat {
    /// The format a template's source teaches.
    pub fn detect(source: &str) -> ToolCallFormat {
        if source.contains("<function=") {
            ToolCallFormat::Qwen3CoderXml
        } else if source.contains("<tool_call>") {
            ToolCallFormat::HermesJson
        } else if source.contains("<|start_header_id|>") && source.contains("\"parameters\"") {
            // Llama 3.x: its header tokens, and a call's arguments under "parameters"
            ToolCallFormat::Llama3Json
        } else {
            ToolCallFormat::None
        }
    }
}

/// A chat template that could not be loaded or rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// A file could not be read, or holds no usable template.
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The template is not valid Jinja (or too large).
    Syntax {
        /// The template.
        origin: TemplateOrigin,
        /// minijinja's message, with the line.
        message: String,
    },
    /// The template called `raise_exception(message)`: it refuses these messages.
    Raised {
        /// The template.
        origin: TemplateOrigin,
        /// The template's own message.
        message: String,
    },
    /// Rendering ran past [`RENDER_FUEL`] (an endless loop or a huge output).
    OutOfFuel {
        /// The template.
        origin: TemplateOrigin,
    },
    /// Rendering failed otherwise (a method that does not exist, a type error, nesting past
    /// [`RECURSION_LIMIT`]).
    Render {
        /// The template.
        origin: TemplateOrigin,
        /// minijinja's message, with the line.
        message: String,
    },
    /// The variables given to a render are not usable (e.g. `messages` is not a list).
    Input {
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Read { path, message } => {
                write!(f, "chat template {}: {message}", path.display())
            }
            TemplateError::Syntax { origin, message } => {
                write!(f, "chat template {origin} is not valid Jinja: {message}")
            }
            TemplateError::Raised { origin, message } => {
                write!(f, "chat template {origin} refused the messages: {message}")
            }
            TemplateError::OutOfFuel { origin } => write!(
                f,
                "chat template {origin} ran past its budget of {RENDER_FUEL} steps (an endless loop or an output too large)"
            ),
            TemplateError::Render { origin, message } => {
                write!(f, "chat template {origin} failed to render: {message}")
            }
            TemplateError::Input { message } => write!(f, "chat template input: {message}"),
        }
    }
}

impl std::error::Error for TemplateError {}

/// The error `raise_exception` attaches, so a render failure can tell it apart.
#[derive(Debug)]
struct Raised(String);

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: TemplateOrigin,
    tool_format: ToolCallFormat,
    thinking: bool,
    bos: String,
    eos: String,
    /// Extra variables every render gets unless the caller gives them (`--no-think`).
    defaults: serde_json::Map<String, serde_json::Value>,
    /// The variables the template reads but never sets, other than the ones every render sets
    /// and the environment's functions (sorted).
    free: Vec<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("tool_format", &self.tool_format)
            .field("thinking", &self.thinking)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos` and `eos` are the model's `bos_token` and `eos_token` ("" where
    /// it has none).
    pub fn from_source(
        source: &str,
        origin: TemplateOrigin,
        bos: &str,
        eos: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::Syntax {
                origin,
                message: format!(
                    "it is {} bytes, more than the limit of {MAX_TEMPLATE_BYTES}",
                    source.len()
                ),
            });
        }
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Syntax {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| out.write_str(&py_str(value)).map_err(Error::from));
        env.add_filter("tojson", tojson);
        env.add_filter("string", |v: &Value| -> Value {
            if v.kind() == ValueKind::String {
                v.clone()
            } else {
                Value::from(py_str(v))
            }
        });
        // Python's notions, which the templates are written against: None is not iterable
        // (an undefined value is, as jinja2's Undefined iterates as empty), and a string is
        // a sequence
        env.add_test("iterable", |v: &Value| {
            matches!(
                v.kind(),
                ValueKind::Undefined
                    | ValueKind::String
                    | ValueKind::Bytes
                    | ValueKind::Seq
                    | ValueKind::Map
                    | ValueKind::Iterable
            )
        });
        env.add_test("sequence", |v: &Value| {
            matches!(
                v.kind(),
                ValueKind::String | ValueKind::Bytes | ValueKind::Seq | ValueKind::Map
            )
        });
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message.clone())
                    .with_source(Raised(message)))
            },
        );
        env.add_function("strftime_now", |format: String| -> String {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            strftime(&format, secs)
        });
        // debug mode names the undefined value behind an error (what `empty_when_added` reads)
        env.set_debug(true);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Syntax {
                origin: origin.clone(),
                message: describe(&e),
            })?;
        let mut free: Vec<String> = env
            .get_template(NAME)
            .map(|t| t.undeclared_variables(false).into_iter().collect())
            .unwrap_or_default();
        free.retain(|v| !RESERVED.contains(&v.as_str()) && env.globals().all(|(g, _)| g != v));
        free.sort();
        Ok(ChatTemplate {
            free,
            env,
            tool_format: ToolCallFormat::detect(source),
            thinking: source.contains("enable_thinking") || source.contains("<think>"),
            origin,
            bos: bos.to_string(),
            defaults: serde_json::Map::new(),
            eos: eos.to_string(),
        })
    }

    /// The built-in ChatML template (Qwen2's tokens, no BOS, `<|im_end|>` as EOS).
    pub fn chatml() -> ChatTemplate {
        ChatTemplate::from_source(CHATML, TemplateOrigin::ChatMl, "", super::chat::IM_END)
            .expect("the built-in template compiles")
    }

    /// Reads a template file (`--chat-template-file`): Jinja text, or a `tokenizer_config.json`
    /// style JSON object with a `chat_template`.
    pub fn from_file(path: &Path, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        let text = read_text(path)?;
        ChatTemplate::from_source(&text, TemplateOrigin::File(path.to_path_buf()), bos, eos)
    }

    /// The template of the model at `model` (a GGUF file or a Hugging Face directory), or
    /// `override_file` when given; the ChatML fallback for a model that ships none.
    ///
    /// Looked for in this order: `override_file`; a GGUF's `tokenizer.chat_template`; a
    /// directory's `chat_template.jinja`, then its `tokenizer_config.json`'s `chat_template` (a
    /// string, or a list of `{name, template}` of which "default" is taken). `bos_token` and
    /// `eos_token` come from the GGUF's `tokenizer.ggml.bos_token_id`/`eos_token_id` or from
    /// `tokenizer_config.json` (a string or an `{"content": ...}` object).
    pub fn for_model(
        model: &Path,
        override_file: Option<&Path>,
    ) -> Result<ChatTemplate, TemplateError> {
        let found = if model.is_file() {
            from_gguf(model)?
        } else {
            from_hf_dir(model)?
        };
        if let Some(file) = override_file {
            return ChatTemplate::from_file(file, &found.bos, &found.eos);
        }
        match found.source {
            Some((source, origin)) => {
                ChatTemplate::from_source(&source, origin, &found.bos, &found.eos)
            }
            None => Ok(ChatTemplate::chatml().with_tokens(&found.bos, &found.eos)),
        }
    }

    /// This template with other special tokens.
    fn with_tokens(mut self, bos: &str, eos: &str) -> ChatTemplate {
        self.bos = bos.to_string();
        if !eos.is_empty() {
            self.eos = eos.to_string();
        }
        self
    }

    /// Where the template came from.
    pub fn origin(&self) -> &TemplateOrigin {
        &self.origin
    }

    /// The tool-call format the template teaches.
    pub fn tool_format(&self) -> ToolCallFormat {
        self.tool_format
    }

    /// Whether the template knows a thinking switch (`enable_thinking`) or writes `<think>`.
    pub fn thinking(&self) -> bool {
        self.thinking
    }

    /// This template with `name` set to `value` in every render that does not set it itself
    /// (as `qwenrt chat --no-think` sets `enable_thinking` to false). A reserved name
    /// (`messages`, `tools`, ...) is an error.
    pub fn with_variable(
        mut self,
        name: &str,
        value: serde_json::Value,
    ) -> Result<ChatTemplate, TemplateError> {
        if RESERVED.contains(&name) {
            return Err(TemplateError::Input {
                message: format!("the extra variable `{name}` would replace the template's own"),
            });
        }
        self.defaults.insert(name.to_string(), value);
        Ok(self)
    }

    /// The `bos_token` the template sees.
    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    /// The `eos_token` the template sees.
    pub fn eos_token(&self) -> &str {
        &self.eos
    }

    /// Renders `messages` (a JSON array of `{"role", "content", ...}` objects, passed to the
    /// template as they are), with `tools` (a JSON array; `none` to the template when absent),
    /// `add_generation_prompt`, `bos_token`, `eos_token`, and the `extra` variables (such as
    /// `enable_thinking`), which may not reuse those names.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        if !messages.is_array() {
            return Err(TemplateError::Input {
                message: "messages must be an array".into(),
            });
        }
        if let Some(t) = tools {
            if !t.is_array() && !t.is_null() {
                return Err(TemplateError::Input {
                    message: "tools must be an array".into(),
                });
            }
        }
        if let Some(name) = extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(TemplateError::Input {
                message: format!("the extra variable `{name}` would replace the template's own"),
            });
        }
        let mut ctx: BTreeMap<String, Value> = self
            .defaults
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.clone(), Value::from(Serde(v))))
            .collect();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert(
            "tools".into(),
            tools.map_or(Value::from(()), |t| Value::from(Serde(t))),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert("bos_token".into(), Value::from(self.bos.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos.as_str()));
        // today's date as llama.cpp gives templates that print it (Llama 3.x, FireFunction),
        // unless the caller set them
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ctx.entry("date_string".into())
            .or_insert_with(|| Value::from(strftime("%d %b %Y", now)));
        ctx.entry("datetime".into())
            .or_insert_with(|| Value::from(strftime("%b %d %Y", now)));
        let template = self
            .env
            .get_template(NAME)
            .expect("the template was added at construction");
        // llama.cpp's reading of a variable nobody set, added to a string: the empty string
        // (see `empty_when_added`); each retry sets one more of the template's free variables
        let mut emptied = 0;
        loop {
            let err = match template.render(Value::from(ctx.clone())) {
                Ok(text) => return Ok(text),
                Err(e) => e,
            };
            match self.empty_when_added(&err) {
                Some(name) if emptied < MAX_EMPTIED && !ctx.contains_key(name) => {
                    ctx.insert(name.to_string(), Value::from(""));
                    emptied += 1;
                }
                _ => return Err(self.render_error(&err)),
            }
        }
    }

    /// The free variable (read by the template, set by neither it nor the caller) whose use
    /// caused `err`, when `err` is `+` between a string and that undefined variable.
    ///
    /// Jinja (and so transformers) raises there; llama.cpp reads the variable as the empty
    /// string, and templates written for llama.cpp rely on it (FireFunction v2 adds an unset
    /// `functions` to its system prompt). So such a render is run again with the variable set
    /// to "": a render Jinja accepts is never changed, and any other error (an attribute of an
    /// undefined value, arithmetic on it, a raised exception) stays an error.
    fn empty_when_added(&self, err: &Error) -> Option<&str> {
        if err.kind() != ErrorKind::InvalidOperation {
            return None;
        }
        let detail = err.detail()?;
        let rest = detail
            .strip_prefix("tried to use + operator on unsupported types string and undefined")
            .or_else(|| {
                detail.strip_prefix(
                    "tried to use + operator on unsupported types undefined and string",
                )
            })?;
        // minijinja names the undefined expression: " (`functions` is undefined...)"
        let name = rest.strip_prefix(" (`")?.split_once("` is undefined")?.0;
        self.free.iter().map(String::as_str).find(|v| *v == name)
    }

    /// A one-turn prompt: a system message (when given; without one, a template such as
    /// Qwen2.5's adds its default), the user message, and the assistant's header.
    pub fn render_turn(&self, system: Option<&str>, user: &str) -> Result<String, TemplateError> {
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(serde_json::json!({"role": "system", "content": s}));
        }
        messages.push(serde_json::json!({"role": "user", "content": user}));
        self.render(
            &serde_json::Value::Array(messages),
            None,
            true,
            &serde_json::Map::new(),
        )
    }

    fn render_error(&self, e: &Error) -> TemplateError {
        let origin = self.origin.clone();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Raised>() {
                return TemplateError::Raised {
                    origin,
                    message: r.0.clone(),
                };
            }
            if let Some(m) = s.downcast_ref::<Error>() {
                if m.kind() == ErrorKind::OutOfFuel {
                    return TemplateError::OutOfFuel { origin };
                }
            }
            source = s.source();
        }
        TemplateError::Render {
            origin,
            message: describe(e),
        }
    }
}

/// A minijinja error in one line: its message and where (`line N`).
fn describe(e: &Error) -> String {
    let mut msg = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    msg
}

/// What a model directory or GGUF offers: its template (if any) and special tokens.
struct Found {
    source: Option<(String, TemplateOrigin)>,
    bos: String,
    eos: String,
}

/// Reads a template file: its text, or the `chat_template` of a JSON object.
fn read_text(path: &Path) -> Result<String, TemplateError> {
    let read = |message: String| TemplateError::Read {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| read(format!("cannot read it: {e}")))?;
    if meta.len() > MAX_TEMPLATE_BYTES as u64 {
        return Err(read(format!(
            "it is {} bytes, more than the limit of {MAX_TEMPLATE_BYTES}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| read(format!("cannot read it: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read(format!(
            "not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    // a tokenizer_config.json-style file holds the template as a JSON string
    if text.trim_start().starts_with('{')
        && !text.trim_start().starts_with("{%")
        && !text.trim_start().starts_with("{{")
        && !text.trim_start().starts_with("{#")
    {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) {
            return match template_field(&map) {
                Ok(Some(t)) => Ok(t),
                Ok(None) => Err(read("a JSON object without a `chat_template`".into())),
                Err(m) => Err(read(m)),
            };
        }
    }
    Ok(text)
}

/// The `chat_template` of a tokenizer_config.json object: a string, or a list of
/// `{name, template}` of which "default" is taken.
fn template_field(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<String>, String> {
    match map.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            for item in list {
                let name = item.get("name").and_then(|n| n.as_str());
                let template = item.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(
                            "chat_template: each entry of the list needs a string `name` and `template`"
                                .into(),
                        )
                    }
                }
            }
            Err("chat_template: the list has no template named \"default\"".into())
        }
        Some(_) => Err("chat_template must be a string or a list of {name, template}".into()),
    }
}

/// A special token in tokenizer_config.json: a string, `{"content": ...}`, or null.
fn config_token(map: &serde_json::Map<String, serde_json::Value>, key: &str) -> String {
    match map.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

fn from_hf_dir(dir: &Path) -> Result<Found, TemplateError> {
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(|e| TemplateError::Read {
            path: config_path.clone(),
            message: format!("cannot read it: {e}"),
        })?;
        match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            Ok(_) => {
                return Err(TemplateError::Read {
                    path: config_path,
                    message: "not a JSON object".into(),
                })
            }
            Err(e) => {
                return Err(TemplateError::Read {
                    path: config_path,
                    message: format!("not valid JSON: {e}"),
                })
            }
        }
    } else {
        None
    };
    let (bos, eos) = config.as_ref().map_or((String::new(), String::new()), |c| {
        (config_token(c, "bos_token"), config_token(c, "eos_token"))
    });
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.is_file() {
        Some((read_text(&jinja)?, TemplateOrigin::ChatTemplateJinja(jinja)))
    } else if let Some(c) = &config {
        template_field(c)
            .map_err(|message| TemplateError::Read {
                path: config_path.clone(),
                message,
            })?
            .map(|t| (t, TemplateOrigin::TokenizerConfig(config_path.clone())))
    } else {
        None
    };
    Ok(Found { source, bos, eos })
}

fn from_gguf(path: &Path) -> Result<Found, TemplateError> {
    let read = |message: String| TemplateError::Read {
        path: path.to_path_buf(),
        message,
    };
    let file = crate::model::gguf::GgufFile::open(path).map_err(|e| read(e.to_string()))?;
    let h = &file.header;
    let source = match h.get("tokenizer.chat_template") {
        None => None,
        Some(v) => match v.as_str() {
            Some(s) => Some((s.to_string(), TemplateOrigin::Gguf(path.to_path_buf()))),
            None => return Err(read("tokenizer.chat_template is not a string".into())),
        },
    };
    let tokens = h.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
    let token = |key: &str| -> String {
        let id = h.get(key).and_then(|v| v.as_u64());
        match (id, tokens) {
            (Some(id), Some(t)) => t
                .as_strings()
                .and_then(|s| s.get(id as usize))
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        }
    };
    Ok(Found {
        source,
        bos: token("tokenizer.ggml.bos_token_id"),
        eos: token("tokenizer.ggml.eos_token_id"),
    })
}

/// `format` with the UTC time `secs` seconds after the Unix epoch, as Python's `strftime`
/// writes `%Y %m %d %H %M %S %y %j %b %B %a %A %p %I %e %%` (the C locale); other
/// directives are kept as written.
fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = secs / 86_400;
    let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // the civil date of a day count (Howard Hinnant's days_from_civil, inverted)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const BEFORE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = BEFORE[(m - 1) as usize] + d + i64::from(leap && m > 2);
    // 1970-01-01 was a Thursday
    let wday = ((days + 3) % 7) as usize;
    let month = MONTHS[(m - 1) as usize];
    let hour12 = if h % 12 == 0 { 12 } else { h % 12 };
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{hour12:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&DAYS[wday][..3]),
            Some('A') => out.push_str(DAYS[wday]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render_src(src: &str, ctx: serde_json::Value) -> Result<String, TemplateError> {
        let t = ChatTemplate::from_source(src, TemplateOrigin::Source, "<s>", "</s>")?;
        let extra = ctx.as_object().cloned().unwrap_or_default();
        t.render(&json!([]), None, false, &extra)
    }

    #[test]
    fn floats_print_as_python_repr() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(-2.5), "-2.5");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(123456789.125), "123456789.125");
        assert_eq!(py_float(1e22), "1e+22");
        assert_eq!(py_float(1.2345678901234568e17), "1.2345678901234568e+17");
        assert_eq!(py_float(9999999999999998.0), "9999999999999998.0");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let v = json!({"b": [1, 2.0, "é\n\"<>&'"], "a": {"x": null, "y": true}, "e": [], "f": {}});
        let out = render_src("{{ v | tojson }}", json!({"v": v})).unwrap();
        assert_eq!(
            out,
            r#"{"b": [1, 2.0, "é\n\"<>&'"], "a": {"x": null, "y": true}, "e": [], "f": {}}"#
        );
        let out = render_src(
            "{{ v | tojson(indent=2) }}",
            json!({"v": {"a": [1, {"b": 2}]}}),
        )
        .unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": 2\n    }\n  ]\n}"
        );
        let out = render_src(
            "{{ v | tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}",
            json!({"v": {"z": "é😀", "a": 1}}),
        )
        .unwrap();
        assert_eq!(out, r#"{"a":1,"z":"\u00e9\ud83d\ude00"}"#);
        let err = render_src("{{ v | tojson(colour=1) }}", json!({"v": 1})).unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err}");
    }

    #[test]
    fn values_print_as_python_does() {
        let out = render_src(
            "{{ n }} {{ t }} {{ f }} {{ x }} {{ l | string }} {{ d }} {{ u }}|",
            json!({"n": null, "t": true, "f": 1.0, "x": 3, "l": ["a", 1, null], "d": {"k": "it's"}}),
        )
        .unwrap();
        assert_eq!(out, "None True 1.0 3 ['a', 1, None] {'k': \"it's\"} |");
    }

    #[test]
    fn python_methods_and_trimmed_blocks() {
        let out = render_src(
            "{% for w in s.split(',') %}\n    {% if w %}[{{ w.strip() }}]{% endif %}\n{% endfor %}",
            json!({"s": " a, b ,c"}),
        )
        .unwrap();
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indent before one
        assert_eq!(out, "[a][b][c]");
        assert!(render_src("{{ s.startswith('ab') }}", json!({"s": "abc"})).unwrap() == "True");
    }

    #[test]
    fn raise_exception_is_its_own_error() {
        let err = render_src("{{ raise_exception('no system role') }}", json!({})).unwrap_err();
        assert_eq!(
            err,
            TemplateError::Raised {
                origin: TemplateOrigin::Source,
                message: "no system role".into()
            }
        );
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn bad_inputs_are_refused() {
        let t = ChatTemplate::chatml();
        let none = serde_json::Map::new();
        assert!(matches!(
            t.render(&json!({"role": "user"}), None, true, &none),
            Err(TemplateError::Input { .. })
        ));
        let mut extra = serde_json::Map::new();
        extra.insert("messages".into(), json!([]));
        let err = t.render(&json!([]), None, true, &extra).unwrap_err();
        assert!(err.to_string().contains("`messages`"), "{err}");
        assert!(matches!(
            t.render(&json!([]), Some(&json!("x")), true, &none),
            Err(TemplateError::Input { .. })
        ));
    }

    #[test]
    fn chatml_renders_qwen2_turns() {
        let t = ChatTemplate::chatml();
        let none = serde_json::Map::new();
        let msgs = json!([{"role": "user", "content": "hi"}]);
        assert_eq!(
            t.render(&msgs, None, true, &none).unwrap(),
            super::super::chat::first_turn(super::super::chat::DEFAULT_SYSTEM_PROMPT, "hi")
        );
        assert_eq!(t.tool_format(), ToolCallFormat::HermesJson);
        assert!(!t.thinking());
    }

    #[test]
    fn tool_formats_are_detected() {
        assert_eq!(
            ToolCallFormat::detect("<tool_call>\n<function=x>"),
            ToolCallFormat::Qwen3CoderXml
        );
        assert_eq!(
            ToolCallFormat::detect("x <tool_call> y"),
            ToolCallFormat::HermesJson
        );
        assert_eq!(
            ToolCallFormat::detect(
                "<|start_header_id|>assistant<|end_header_id|>{{- '\"parameters\": ' }}"
            ),
            ToolCallFormat::Llama3Json
        );
        assert_eq!(ToolCallFormat::detect("{{ x }}"), ToolCallFormat::None);
    }

    #[test]
    fn an_unset_variable_added_to_a_string_reads_as_empty() {
        // llama.cpp's reading (FireFunction v2 adds an unset `functions` to its prompt)
        let src = "{%- set s = 'A' + functions -%}{{ s ~ '|' ~ (unset + 'B') }}";
        assert_eq!(render_src(src, json!({})).unwrap(), "A|B");
        // given by the caller, the variable is used as given
        assert_eq!(
            render_src(src, json!({"functions": "F", "unset": "U"})).unwrap(),
            "AF|UB"
        );
        // a render that succeeds is untouched: the variable is still undefined in it
        let src = "{{ functions is defined }} {{ 'x' ~ functions }}";
        assert_eq!(render_src(src, json!({})).unwrap(), "False x");
        // anything else done with an unset variable, or with a caller's null, stays an error
        for (src, ctx) in [
            ("{{ 1 + functions }}", json!({})),
            ("{{ 'a' + functions.name }}", json!({})),
            ("{{ 'a' + d.missing }}", json!({"d": {}})),
            ("{{ 'a' + n }}", json!({"n": null})),
            ("{{ 'a' - functions }}", json!({})),
        ] {
            let err = render_src(src, ctx).unwrap_err();
            assert!(matches!(err, TemplateError::Render { .. }), "{src}: {err}");
        }
        // at most MAX_EMPTIED of them per render (each is a render again)
        let sum = |n: usize| (0..n).map(|i| format!("('-' + v{i})")).collect::<Vec<_>>();
        let src = format!("{{{{ {} }}}}", sum(MAX_EMPTIED).join(" ~ "));
        assert_eq!(
            render_src(&src, json!({})).unwrap(),
            "-".repeat(MAX_EMPTIED)
        );
        let src = format!("{{{{ {} }}}}", sum(1000).join(" ~ "));
        let start = std::time::Instant::now();
        let err = render_src(&src, json!({})).unwrap_err();
        assert!(err.to_string().contains("`v8` is undefined"), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn chat_template_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }

    #[test]
    fn strftime_writes_dates_as_python_does() {
        // 2026-12-04 23:16:48 UTC, a Friday (day 338 of a non-leap year)
        let t = 1_796_426_208;
        assert_eq!(strftime("%d %b %Y", t), "04 Dec 2026");
        assert_eq!(strftime("%b %d %Y", t), "Dec 04 2026");
        assert_eq!(strftime("%A %B %e, %y %j", t), "Friday December  4, 26 338");
        assert_eq!(
            strftime("%H:%M:%S %I%p %a %m %% %q", t),
            "23:16:48 11PM Fri 12 % %q"
        );
        // 2024-02-29 (leap day) and the epoch
        assert_eq!(
            strftime("%Y-%m-%d %j %a", 1_709_164_800),
            "2024-02-29 060 Thu"
        );
        assert_eq!(strftime("%Y-%m-%d %A", 0), "1970-01-01 Thursday");
        let today = render_src("{{ strftime_now('%Y') }}", json!({})).unwrap();
        assert!(today.len() == 4 && today.starts_with("20"), "{today}");
        // llama.cpp's date variables: "05 Dec 2026" and "Dec 05 2026"
        let dates = render_src("{{ date_string }}|{{ datetime }}", json!({})).unwrap();
        let (d, dt) = dates.split_once('|').unwrap();
        assert_eq!((d.len(), dt.len()), (11, 11), "{dates}");
        assert_eq!((&d[3..6], &d[7..]), (&dt[..3], &dt[7..]), "{dates}");
    }
}
