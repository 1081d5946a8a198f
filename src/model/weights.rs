//! The model's weights: memory-mapped safetensors (a Hugging Face directory) or one GGUF file,
//! checked against the config before anything runs. Tensor data stays in the mapping; nothing
//! is copied to the heap. Each tensor keeps its own [`Format`] (a float dtype, or a ggml block
//! format from a GGUF file). Tensors need not be aligned: the kernels use unaligned loads.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use qwenrt_kernels::{Cpu, Dtype, Format};

use crate::model::config::{Config, ConfigError, Pooling};
use crate::model::convert;
use crate::model::gguf::GgufHeader;

/// Why a model directory could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// config.json is missing or invalid.
    Config(ConfigError),
    /// A file could not be opened or mapped.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        err: std::io::Error,
    },
    /// A safetensors file or shard index that is malformed.
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A tensor the model needs is absent.
    MissingTensor(String),
    /// A tensor in a format qwenrt cannot compute with.
    Dtype {
        /// The tensor.
        tensor: String,
        /// Its format.
        found: String,
    },
    /// A tensor whose shape does not match the config.
    Shape {
        /// The tensor.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Config(e) => write!(f, "{e}"),
            LoadError::Io { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            LoadError::Format { path, why } => write!(f, "{}: {why}", path.display()),
            LoadError::MissingTensor(t) => write!(f, "missing tensor `{t}`"),
            LoadError::Dtype { tensor, found } => {
                write!(
                    f,
                    "tensor `{tensor}` has dtype {found}; expected BF16, F16 or F32 \
                     (or, in a GGUF file, Q4_0, Q5_0, Q8_0, Q4_K, Q5_K or Q6_K for a matrix)"
                )
            }
            LoadError::Shape {
                tensor,
                expected,
                found,
            } => {
                write!(
                    f,
                    "tensor `{tensor}` has shape {found:?}; the config implies {expected:?}"
                )
            }
        }
    }
}

impl std::error::Error for LoadError {}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> Self {
        LoadError::Config(e)
    }
}

/// Where one tensor's bytes are: a shard and a byte range in its mapping.
#[derive(Clone, Debug)]
pub struct TensorRef {
    shard: usize,
    start: usize,
    end: usize,
    /// The tensor's format.
    pub format: Format,
    /// Its row-major shape.
    pub shape: Vec<usize>,
    /// Where its rows lie repacked for the AVX-512 decode matvec
    /// ([`qwenrt_kernels::quant::repack`]), in [`Weights::repacked`]'s buffer, if they were.
    pub repacked: Option<(usize, usize)>,
}

impl TensorRef {
    /// The float dtype of a norm or bias. Loading checks that every 1-D tensor is a float
    /// (`Weights::from_tensors`), so only a matrix can be anything else.
    pub fn dtype(&self) -> Dtype {
        match self.format {
            Format::Float(d) => d,
            Format::Quant(q) => {
                panic!("{q} tensor read as floats (loading lets no such vector in)")
            }
        }
    }
}

/// A SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
pub struct FeedForward {
    /// Gate `[ffn, hidden]`.
    pub gate_proj: TensorRef,
    /// Up `[ffn, hidden]`.
    pub up_proj: TensorRef,
    /// Down `[hidden, ffn]`.
    pub down_proj: TensorRef,
}

impl FeedForward {
    /// The block's three matrices.
    pub fn matrices(&self) -> [&TensorRef; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    fn matrices_mut(&mut self) -> [&mut TensorRef; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }
}

/// A layer's feed-forward part: a dense MLP, or a router over experts (Qwen3-MoE).
#[derive(Clone, Debug)]
pub enum Mlp {
    /// One SwiGLU MLP of `intermediate_size`.
    Dense(FeedForward),
    /// Mixture of experts: each token runs the `experts_per_tok` experts the router rates
    /// highest, and sums their outputs weighted by the router's probabilities.
    Moe {
        /// The router `[experts, hidden]` (`mlp.gate`; GGUF `ffn_gate_inp`).
        router: TensorRef,
        /// The experts, each a SwiGLU MLP of `moe_intermediate_size`, each matrix in its own
        /// format (from one tensor per expert, or a slice of GGUF's stacked `ffn_*_exps`).
        experts: Vec<FeedForward>,
        /// Experts per token (the config's `num_experts_per_tok`).
        top_k: usize,
        /// Whether the top-k probabilities are renormalized (`norm_topk_prob`).
        renormalize: bool,
    },
}

impl Mlp {
    /// The dense MLP, if this is one.
    pub fn dense(&self) -> Option<&FeedForward> {
        match self {
            Mlp::Dense(ffn) => Some(ffn),
            Mlp::Moe { .. } => None,
        }
    }
}

/// The tensors of one decoder layer.
#[derive(Clone, Debug)]
pub struct Layer {
    /// RMSNorm before attention.
    pub input_layernorm: TensorRef,
    /// Query projection `[heads * head_dim, hidden]`.
    pub q_proj: TensorRef,
    /// Query bias (Qwen2).
    pub q_bias: Option<TensorRef>,
    /// Key projection `[kv_heads * head_dim, hidden]`.
    pub k_proj: TensorRef,
    /// Key bias (Qwen2).
    pub k_bias: Option<TensorRef>,
    /// Value projection `[kv_heads * head_dim, hidden]`.
    pub v_proj: TensorRef,
    /// Value bias (Qwen2).
    pub v_bias: Option<TensorRef>,
    /// RMSNorm of each query head `[head_dim]`, before RoPE (Qwen3).
    pub q_norm: Option<TensorRef>,
    /// RMSNorm of each key head `[head_dim]`, before RoPE (Qwen3).
    pub k_norm: Option<TensorRef>,
    /// Attention output projection `[hidden, heads * head_dim]`.
    pub o_proj: TensorRef,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: TensorRef,
    /// The MLP, dense or of experts.
    pub mlp: Mlp,
}

impl Layer {
    /// The layer's weight matrices: q, k, v, o, then the MLP's (the router, then each
    /// expert's gate, up and down).
    pub fn matrices(&self) -> impl Iterator<Item = &TensorRef> {
        let attn = [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj];
        let (router, experts): (Option<&TensorRef>, &[FeedForward]) = match &self.mlp {
            Mlp::Dense(ffn) => (None, std::slice::from_ref(ffn)),
            Mlp::Moe {
                router, experts, ..
            } => (Some(router), experts),
        };
        attn.into_iter()
            .chain(router)
            .chain(experts.iter().flat_map(FeedForward::matrices))
    }

    /// The layer's weight matrices, mutably (in [`Layer::matrices`]' order).
    pub fn matrices_mut(&mut self) -> impl Iterator<Item = &mut TensorRef> {
        let attn = [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
        ];
        let (router, experts): (Option<&mut TensorRef>, &mut [FeedForward]) = match &mut self.mlp {
            Mlp::Dense(ffn) => (None, std::slice::from_mut(ffn)),
            Mlp::Moe {
                router, experts, ..
            } => (Some(router), experts),
        };
        attn.into_iter()
            .chain(router)
            .chain(experts.iter_mut().flat_map(FeedForward::matrices_mut))
    }

    /// The norms and biases of the layer (the 1-D tensors it has).
    pub fn vectors(&self) -> impl Iterator<Item = &TensorRef> {
        [&self.input_layernorm, &self.post_attention_layernorm]
            .into_iter()
            .chain(
                [
                    &self.q_bias,
                    &self.k_bias,
                    &self.v_bias,
                    &self.q_norm,
                    &self.k_norm,
                ]
                .into_iter()
                .flatten(),
            )
    }

    /// Every tensor of the layer: its vectors, then its matrices.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorRef> {
        self.vectors().chain(self.matrices())
    }
}

/// Immutable, shareable model weights (one per process; many sessions may use it).
pub struct Weights {
    /// The validated config.
    pub config: Config,
    /// The model directory, or the GGUF file.
    pub dir: PathBuf,
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: TensorRef,
    /// The decoder layers.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub norm: TensorRef,
    /// The output head; the same tensor as `embed_tokens` when the model is tied.
    pub lm_head: TensorRef,
    /// Whether `lm_head` is `embed_tokens` (tied embeddings).
    pub tied: bool,
    /// The safetensors files (mapped, or held in memory by [`Weights::from_bytes`]).
    shards: Vec<(PathBuf, Backing)>,
    /// The Q4_0 / Q5_0 / Q8_0 matrices repacked for the AVX-512 decode matvec (empty unless
    /// [`Weights::repack_for_decode`] ran).
    repacked: Vec<u8>,
}

/// The bytes of one safetensors file.
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<Mmap, LoadError> {
    let file = File::open(path).map_err(|err| LoadError::Io {
        path: path.into(),
        err,
    })?;
    // SAFETY: the mapping is read-only and private to this process. Memory-mapping is unsound
    // only if another process truncates or rewrites the file while it is mapped; model files
    // are treated as immutable for the life of the process (the same contract every mmap-based
    // runtime makes), and all reads go through bounds-checked slices of the mapping.
    let map = unsafe { Mmap::map(&file) }.map_err(|err| LoadError::Io {
        path: path.into(),
        err,
    })?;
    // Transparent huge pages for the weights: decode streams every weight once per token, and
    // with 4 KiB pages each page costs a TLB miss (a two-dimensional page walk on a VM). Where
    // the kernel reads the file into PMD-sized page-cache folios (file THP; ext4 and xfs on
    // recent kernels) it maps them 2 MiB at a time. Advisory: an error only means no huge pages.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

fn dtype_of(name: &str, d: safetensors::Dtype) -> Result<Dtype, LoadError> {
    match d {
        safetensors::Dtype::BF16 => Ok(Dtype::BF16),
        safetensors::Dtype::F16 => Ok(Dtype::F16),
        safetensors::Dtype::F32 => Ok(Dtype::F32),
        other => Err(LoadError::Dtype {
            tensor: name.into(),
            found: format!("{other:?}"),
        }),
    }
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Loads `dir`: config.json, then model.safetensors or the shards named by
    /// model.safetensors.index.json; validates every tensor against the config.
    ///
    /// A path to a file is read as GGUF ([`Weights::load_gguf`]).
    pub fn load(dir: &Path) -> Result<Weights, LoadError> {
        if dir.is_file() {
            return Weights::load_gguf(dir);
        }
        let mut config = Config::from_file(&dir.join("config.json"))?;
        config.pooling = Pooling::from_sentence_transformers(dir)?;
        let files = shard_files(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors: HashMap<String, TensorRef> = HashMap::new();
        for path in files {
            let map = map_file(&path)?;
            let shard = shards.len();
            read_shard(&path, &map, shard, &mut tensors)?;
            shards.push((path, Backing::Mmap(map)));
        }
        Weights::from_tensors(config, dir, shards, tensors)
    }

    /// Validates a model held in memory: config.json bytes and one safetensors file, with the
    /// same checks as [`Weights::load`] (for tests and fuzzing, where writing a directory per
    /// input would be slow). Errors name the file as `<memory>/model.safetensors`.
    pub fn from_bytes(config_json: &[u8], safetensors: Vec<u8>) -> Result<Weights, LoadError> {
        let config = Config::from_json(config_json)?;
        let dir = Path::new("<memory>");
        let path = dir.join("model.safetensors");
        let mut tensors = HashMap::new();
        read_shard(&path, &safetensors, 0, &mut tensors)?;
        let shards = vec![(path, Backing::Owned(safetensors))];
        Weights::from_tensors(config, dir, shards, tensors)
    }

    /// Loads a GGUF file: the config from its metadata (as `qwenrt convert` derives it), the
    /// tensors mapped in place in their own formats.
    ///
    /// Where the kernels will run the repacked layout ([`Cpu::runs_repacked`] of
    /// [`Cpu::from_env`]: AVX-512), the Q4_0 / Q5_0 / Q8_0 matrices are repacked for its decode
    /// matvec ([`Weights::repack_for_decode`]), unless `QWENRT_REPACK=0`.
    pub fn load_gguf(path: &Path) -> Result<Weights, LoadError> {
        let map = map_file(path)?;
        let mut w = Weights::from_gguf(path, Backing::Mmap(map))?;
        let wanted = std::env::var("QWENRT_REPACK").map_or(true, |v| v != "0");
        if wanted && Cpu::from_env().is_ok_and(Cpu::runs_repacked) {
            w.repack_for_decode();
        }
        Ok(w)
    }

    /// [`Weights::load_gguf`] on GGUF bytes held in memory (for tests and fuzzing); errors
    /// name the file as `<memory>/model.gguf`.
    pub fn from_gguf_bytes(bytes: Vec<u8>) -> Result<Weights, LoadError> {
        Weights::from_gguf(Path::new("<memory>/model.gguf"), Backing::Owned(bytes))
    }

    fn from_gguf(path: &Path, backing: Backing) -> Result<Weights, LoadError> {
        let bad = |why: String| LoadError::Format {
            path: path.into(),
            why,
        };
        let header = GgufHeader::parse(backing.bytes()).map_err(|e| bad(e.to_string()))?;
        let config_json = convert::config_json(&header).map_err(|e| bad(e.to_string()))?;
        let mut config = Config::from_json(config_json.to_string().as_bytes())
            .map_err(|e| bad(format!("the config its metadata gives: {e}")))?;
        config.pooling = convert::pooling(&header).map_err(|e| bad(e.to_string()))?;
        let mut tensors = HashMap::new();
        for info in &header.tensors {
            // tensors the model does not use (e.g. rope tables) are left alone
            let Some(name) = convert::hf_tensor_name(&info.name) else {
                continue;
            };
            let format = info.ty.format().ok_or_else(|| LoadError::Dtype {
                tensor: info.name.clone(),
                found: format!("{:?}", info.ty),
            })?;
            // the header parse checked that every tensor's bytes lie inside the file
            let start = usize::try_from(header.data_offset + info.offset)
                .map_err(|_| bad(format!("tensor `{}`: offset overflow", info.name)))?;
            let end = start + info.n_bytes as usize;
            let shape = info.row_major_shape().iter().map(|&d| d as usize).collect();
            tensors.insert(
                name,
                TensorRef {
                    shard: 0,
                    start,
                    end,
                    format,
                    shape,
                    repacked: None,
                },
            );
        }
        let shards = vec![(path.to_path_buf(), backing)];
        Weights::from_tensors(config, path, shards, tensors)
    }

    fn from_tensors(
        config: Config,
        dir: &Path,
        shards: Vec<(PathBuf, Backing)>,
        mut tensors: HashMap<String, TensorRef>,
    ) -> Result<Weights, LoadError> {
        let c = &config;
        let (h, kv, f, v) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.vocab_size);
        if let Some(m) = &c.moe {
            unstack_experts(dir, &mut tensors, c.num_hidden_layers, m.num_experts)?;
        }
        let mut take = |name: String, shape: &[usize]| -> Result<TensorRef, LoadError> {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| LoadError::MissingTensor(name.clone()))?;
            if t.shape != shape {
                return Err(LoadError::Shape {
                    tensor: name,
                    expected: shape.to_vec(),
                    found: t.shape,
                });
            }
            // norms and biases are read as floats; a matrix's rows must be whole blocks
            let cols = *shape.last().unwrap_or(&0);
            let row_ok = t.format.row_bytes(cols).is_some_and(|rb| {
                rb.checked_mul(shape.iter().rev().skip(1).product())
                    .is_some_and(|n| n == t.end - t.start)
            });
            if (shape.len() == 1 && t.format.float().is_none()) || !row_ok {
                return Err(LoadError::Dtype {
                    tensor: name,
                    found: t.format.to_string(),
                });
            }
            Ok(t)
        };
        let embed_tokens = take("model.embed_tokens.weight".into(), &[v, h])?;
        let (qd, hd, arch) = (c.q_dim(), c.head_dim, c.arch);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut opt = |has: bool, name: String, shape: &[usize]| {
                has.then(|| take(name, shape)).transpose()
            };
            let q_bias = opt(arch.qkv_bias(), format!("{p}.self_attn.q_proj.bias"), &[qd])?;
            let k_bias = opt(arch.qkv_bias(), format!("{p}.self_attn.k_proj.bias"), &[kv])?;
            let v_bias = opt(arch.qkv_bias(), format!("{p}.self_attn.v_proj.bias"), &[kv])?;
            let q_norm = opt(
                arch.qk_norm(),
                format!("{p}.self_attn.q_norm.weight"),
                &[hd],
            )?;
            let k_norm = opt(
                arch.qk_norm(),
                format!("{p}.self_attn.k_norm.weight"),
                &[hd],
            )?;
            let router = match &c.moe {
                Some(m) if c.is_sparse(i) => Some((
                    m,
                    take(format!("{p}.mlp.gate.weight"), &[m.num_experts, h])?,
                )),
                _ => None,
            };
            let mut swiglu = |p: &str, f: usize| -> Result<FeedForward, LoadError> {
                Ok(FeedForward {
                    gate_proj: take(format!("{p}.gate_proj.weight"), &[f, h])?,
                    up_proj: take(format!("{p}.up_proj.weight"), &[f, h])?,
                    down_proj: take(format!("{p}.down_proj.weight"), &[h, f])?,
                })
            };
            let mlp = match router {
                Some((m, router)) => Mlp::Moe {
                    router,
                    experts: (0..m.num_experts)
                        .map(|e| swiglu(&format!("{p}.mlp.experts.{e}"), m.moe_intermediate_size))
                        .collect::<Result<_, _>>()?,
                    top_k: m.experts_per_tok,
                    renormalize: m.norm_topk_prob,
                },
                None => Mlp::Dense(swiglu(&format!("{p}.mlp"), f)?),
            };
            layers.push(Layer {
                input_layernorm: take(format!("{p}.input_layernorm.weight"), &[h])?,
                q_proj: take(format!("{p}.self_attn.q_proj.weight"), &[qd, h])?,
                q_bias,
                k_proj: take(format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                k_bias,
                v_proj: take(format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                v_bias,
                q_norm,
                k_norm,
                o_proj: take(format!("{p}.self_attn.o_proj.weight"), &[h, qd])?,
                post_attention_layernorm: take(
                    format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?,
                mlp,
            });
        }
        let norm = take("model.norm.weight".into(), &[h])?;
        // Without lm_head.weight the head is the embedding matrix (tied).
        let (lm_head, tied) = match take("lm_head.weight".into(), &[v, h]) {
            Ok(t) => (t, false),
            Err(LoadError::MissingTensor(_)) => (embed_tokens.clone(), true),
            Err(e) => return Err(e),
        };
        Ok(Weights {
            config,
            dir: dir.to_path_buf(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            tied,
            shards,
            repacked: Vec::new(),
        })
    }

    /// Repacks every Q4_0, Q5_0 and Q8_0 matrix the decode step streams (the layers'
    /// projections and the output head) into the layout of the AVX-512 decode matvec, in one
    /// buffer of the same size as their blocks; decode on AVX-512 reads them from there, the
    /// other kernels keep reading the mapped file. Returns the bytes repacked.
    pub fn repack_for_decode(&mut self) -> usize {
        use qwenrt_kernels::quant::{repack, repackable};
        if !self.repacked.is_empty() {
            // done once: the ranges recorded in the tensors point into this buffer
            return self.repacked.len();
        }
        let quant = |t: &TensorRef| match t.format {
            Format::Quant(qt) if repackable(qt) => Some(qt),
            _ => None,
        };
        let total: usize = (self.layers.iter().flat_map(Layer::matrices))
            .chain(std::iter::once(&self.lm_head))
            .filter(|t| quant(t).is_some())
            .map(|t| t.end - t.start)
            .sum();
        let mut buf = vec![0u8; total];
        let mut at = 0;
        let shards = &self.shards;
        let layers = self.layers.iter_mut().flat_map(Layer::matrices_mut);
        for t in layers.chain(std::iter::once(&mut self.lm_head)) {
            let Some(qt) = quant(t) else { continue };
            let len = t.end - t.start;
            let cols = *t.shape.last().unwrap_or(&0);
            let src = &shards[t.shard].1.bytes()[t.start..t.end];
            repack(qt, src, cols, &mut buf[at..at + len]);
            t.repacked = Some((at, at + len));
            at += len;
        }
        self.repacked = buf;
        total
    }

    /// A matrix's repacked rows, if [`Weights::repack_for_decode`] repacked it.
    #[inline]
    pub fn repacked(&self, t: &TensorRef) -> Option<&[u8]> {
        t.repacked.map(|(a, b)| &self.repacked[a..b])
    }

    /// Bytes of repacked matrices held (see [`Weights::repack_for_decode`]).
    pub fn repacked_bytes(&self) -> usize {
        self.repacked.len()
    }

    /// The bytes of a tensor, straight from the mapping.
    #[inline]
    pub fn bytes(&self, t: &TensorRef) -> &[u8] {
        &self.shards[t.shard].1.bytes()[t.start..t.end]
    }

    /// Every 2-D weight matrix (the embedding, each layer's projections, a MoE layer's router
    /// and every expert's, the head when untied).
    pub fn matrices(&self) -> impl Iterator<Item = &TensorRef> {
        let layers = self.layers.iter().flat_map(Layer::matrices);
        std::iter::once(&self.embed_tokens)
            .chain(layers)
            .chain((!self.tied).then_some(&self.lm_head))
    }

    /// The matrices' formats with their counts, most common first (e.g. `BF16` or
    /// `F16 x145, F32 x24`): each tensor is read in its own format.
    pub fn matrix_formats(&self) -> String {
        let mut counts: Vec<(Format, usize)> = Vec::new();
        for t in self.matrices() {
            match counts.iter_mut().find(|(d, _)| *d == t.format) {
                Some((_, c)) => *c += 1,
                None => counts.push((t.format, 1)),
            }
        }
        counts.sort_by_key(|&(_, c)| std::cmp::Reverse(c));
        if let [(d, _)] = counts[..] {
            return d.to_string();
        }
        let parts: Vec<String> = counts.iter().map(|(d, c)| format!("{d} x{c}")).collect();
        parts.join(", ")
    }

    /// Total bytes of tensor data mapped.
    pub fn mapped_bytes(&self) -> usize {
        self.shards.iter().map(|(_, m)| m.bytes().len()).sum()
    }

    /// Bytes of weights read per decoded token: every layer matrix, the norms and biases, and
    /// the output head (the embedding lookup reads one row); of a layer of experts, the router
    /// and the share of the experts one token runs (`experts_per_tok / num_experts` of them).
    pub fn bytes_per_token(&self) -> usize {
        let size = |t: &TensorRef| t.end - t.start;
        let mut n = size(&self.lm_head) + size(&self.norm);
        for l in &self.layers {
            n += l.vectors().map(size).sum::<usize>();
            n += [&l.q_proj, &l.k_proj, &l.v_proj, &l.o_proj]
                .map(size)
                .iter()
                .sum::<usize>();
            n += match &l.mlp {
                Mlp::Dense(ffn) => ffn.matrices().map(size).iter().sum(),
                Mlp::Moe {
                    router,
                    experts,
                    top_k,
                    ..
                } => {
                    let all: usize = experts.iter().flat_map(|e| e.matrices().map(size)).sum();
                    size(router) + all / experts.len().max(1) * top_k
                }
            };
        }
        n
    }

    /// Whether any matrix is block-quantized (the engine then plans room for 8-bit inputs).
    pub fn has_quantized(&self) -> bool {
        self.matrices()
            .chain(std::iter::once(&self.lm_head))
            .any(|t| matches!(t.format, Format::Quant(_)))
    }

    /// The safetensors files backing these weights.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|(p, _)| p.as_path())
    }
}

/// The projections of an expert, as named per expert (`mlp.experts.E.{proj}.weight`) and
/// stacked (`mlp.experts.{proj}.weight`, `[experts, rows, cols]`: GGUF's `ffn_{gate,up,down}_exps`).
const EXPERT_PROJS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Splits each layer's stacked expert tensors (GGUF's 3-D `ffn_*_exps`, named
/// `model.layers.N.mlp.experts.{proj}.weight` on loading) into one tensor per expert, named as
/// the hub stores them, each a range of the stacked one in the same format. A layer may not hold
/// both forms of the same projection.
fn unstack_experts(
    path: &Path,
    tensors: &mut HashMap<String, TensorRef>,
    layers: usize,
    experts: usize,
) -> Result<(), LoadError> {
    for l in 0..layers {
        for proj in EXPERT_PROJS {
            let name = format!("model.layers.{l}.mlp.experts.{proj}.weight");
            let Some(t) = tensors.remove(&name) else {
                continue;
            };
            let &[n, rows, cols] = &t.shape[..] else {
                return Err(LoadError::Shape {
                    tensor: name,
                    expected: vec![experts, 0, 0],
                    found: t.shape,
                });
            };
            let per = t.format.row_bytes(cols).and_then(|rb| rb.checked_mul(rows));
            let whole = per.and_then(|p| p.checked_mul(n)) == Some(t.end - t.start);
            if n != experts || !whole {
                // the expert count, or rows that are not whole blocks of the format
                return Err(if n != experts {
                    LoadError::Shape {
                        tensor: name,
                        expected: vec![experts, rows, cols],
                        found: t.shape,
                    }
                } else {
                    LoadError::Dtype {
                        tensor: name,
                        found: t.format.to_string(),
                    }
                });
            }
            let per = per.unwrap_or(0);
            for e in 0..experts {
                let one = format!("model.layers.{l}.mlp.experts.{e}.{proj}.weight");
                let start = t.start + e * per;
                let slice = TensorRef {
                    shard: t.shard,
                    start,
                    end: start + per,
                    format: t.format,
                    shape: vec![rows, cols],
                    repacked: None,
                };
                if tensors.insert(one.clone(), slice).is_some() {
                    return Err(LoadError::Format {
                        path: path.into(),
                        why: format!("tensor `{name}` holds expert {e}, which `{one}` holds too"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// model.safetensors, or the distinct files of model.safetensors.index.json, sorted.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(LoadError::Format {
            path: dir.into(),
            why: "has neither model.safetensors nor model.safetensors.index.json".into(),
        });
    }
    let text = std::fs::read(&index).map_err(|err| LoadError::Io {
        path: index.clone(),
        err,
    })?;
    let idx: ShardIndex = serde_json::from_slice(&text).map_err(|e| LoadError::Format {
        path: index.clone(),
        why: e.to_string(),
    })?;
    let mut names: Vec<&String> = idx
        .weight_map
        .values()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let ok = !name.is_empty()
            && Path::new(name)
                .file_name()
                .map(|f| f == name.as_str())
                .unwrap_or(false);
        if !ok {
            return Err(LoadError::Format {
                path: index.clone(),
                why: format!("shard name {name:?} is not a plain file name in the model directory"),
            });
        }
        files.push(dir.join(name));
    }
    if files.is_empty() {
        return Err(LoadError::Format {
            path: index,
            why: "weight_map is empty".into(),
        });
    }
    Ok(files)
}

/// Parses one safetensors file's header and records where each tensor lies.
fn read_shard(
    path: &Path,
    map: &[u8],
    shard: usize,
    tensors: &mut HashMap<String, TensorRef>,
) -> Result<(), LoadError> {
    let bad = |why: String| LoadError::Format {
        path: path.into(),
        why,
    };
    let (header_len, meta) = match safetensors::SafeTensors::read_metadata(map) {
        Ok(v) => v,
        Err(safetensors::SafeTensorError::MetadataIncompleteBuffer) => {
            return Err(bad(size_mismatch(map)))
        }
        Err(e) => return Err(bad(format!("invalid safetensors header: {e}"))),
    };
    let data_start = header_len + 8;
    let data_len = map.len() - data_start;
    if meta.data_len() > data_len {
        return Err(bad(format!(
            "truncated: the header describes {} bytes of tensor data but the file holds {data_len}",
            meta.data_len()
        )));
    }
    for (name, info) in meta.tensors() {
        let dtype = dtype_of(&name, info.dtype)?;
        let (s, e) = info.data_offsets;
        let start = data_start
            .checked_add(s)
            .ok_or_else(|| bad(format!("tensor `{name}`: offset overflow")))?;
        let end = data_start
            .checked_add(e)
            .ok_or_else(|| bad(format!("tensor `{name}`: offset overflow")))?;
        if end > map.len() || start > end {
            return Err(bad(format!(
                "tensor `{name}` runs past the end of the file"
            )));
        }
        if tensors.contains_key(&name) {
            return Err(bad(format!(
                "tensor `{name}` appears in more than one shard"
            )));
        }
        tensors.insert(
            name,
            TensorRef {
                shard,
                start,
                end,
                format: Format::Float(dtype),
                shape: info.shape.clone(),
                repacked: None,
            },
        );
    }
    Ok(())
}

/// Why a file whose header is otherwise valid does not hold exactly the tensor data the header
/// describes (safetensors reports only "file not fully covered").
fn size_mismatch(map: &[u8]) -> String {
    let described = (|| {
        let n = usize::try_from(u64::from_le_bytes(map.get(..8)?.try_into().ok()?)).ok()?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(map.get(8..8usize.checked_add(n)?)?).ok()?;
        let end = header
            .values()
            .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
            .max()
            .unwrap_or(0);
        Some((8 + n, end))
    })();
    match described {
        Some((data_start, end)) => {
            let held = (map.len() - data_start) as u64;
            if held < end {
                format!(
                    "truncated: the header describes {end} bytes of tensor data but the file \
                     holds {held} ({} bytes in all)",
                    map.len()
                )
            } else {
                format!(
                    "{} bytes follow the {end} bytes of tensor data the header describes",
                    held - end
                )
            }
        }
        None => "the file size does not match its header".into(),
    }
}
