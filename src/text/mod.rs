//! Text in and out: the tokenizer (with a UTF-8-safe streaming decoder) and the chat template.

pub mod chat;
mod pyvalue;
pub mod template;
pub mod tokenizer;

pub use template::{ChatTemplate, TemplateError, TemplateOrigin, ToolCallFormat};
