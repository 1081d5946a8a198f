//! What a model is made of: its config, its weights (safetensors, memory-mapped), the GGUF
//! reader, the GGUF-to-Hugging-Face converter, and synthetic models.

pub mod config;
pub mod convert;
pub mod gguf;
pub mod synthetic;
pub mod weights;
