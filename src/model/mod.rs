//! What a model is made of: its config, its weights (safetensors, memory-mapped), the GGUF
//! reader and writer, the GGUF-to-Hugging-Face converter, and synthetic models (safetensors of
//! any shape in [`synthetic`], GGUF files of real Qwen shapes in llama.cpp's mixes in [`synth`]).

pub mod config;
pub mod convert;
pub mod gguf;
pub mod synth;
pub mod synthetic;
pub mod weights;
