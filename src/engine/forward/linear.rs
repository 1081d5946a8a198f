//! The model's weight matrices prepared for the forward pass. Each is a [`Linear`]: the tensor
//! and the [`Kernel`] that multiplies by it, chosen once in [`crate::engine::Engine::new`] from
//! the tensor's format, whether the loader repacked it, the engine's options and the [`Cpu`];
//! the matrices that read one input are grouped ([`Qkv`], [`Ffn`]) with whether one decode row
//! can stream them in one dispatch. [`Matmul`] runs them over a step's rows with the arena's
//! kernel scratch, so the forward pass names a matrix and never a format, layout or ISA.

use qwenrt_kernels::ops::Matrix;
use qwenrt_kernels::quant::{QMatrix, QuantType, RepackedMatrix};
use qwenrt_kernels::{par, Bf16, Cpu, Dtype, Format, ThreadPool, F16, F32};

use crate::model::weights::{FeedForward, Mlp, TensorRef, Weights};

/// How a matrix is multiplied by a step's rows: decode rows by the decode matvec (the weights
/// streamed once for all of them, each row's numbers those of a lone matvec), prefill rows by
/// a matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::engine) enum Kernel {
    /// Float weights of this dtype; f32 matmul for prefill.
    Float(Dtype),
    /// Bf16 weights whose prefill matmul takes bf16 dot products, its input rounded to bf16 (an
    /// MLP's gate and up under [`crate::engine::EngineOptions::prefill_bf16`]).
    Bf16Dot,
    /// Block-quantized: the inputs quantized to 8-bit blocks once per call, integer dot
    /// products, the decode rows read from the file's blocks.
    Quant(QuantType),
    /// Block-quantized, the decode rows read from the layout the loader repacked the matrix
    /// into for this CPU (prefill from the file's blocks).
    Repacked(QuantType),
}

/// One weight matrix (`[rows, cols]`, row-major: `out = x · wᵀ`) and its kernel.
pub(in crate::engine) struct Linear {
    w: TensorRef,
    kernel: Kernel,
    /// The output width (rows of `w`).
    rows: usize,
    /// The input width.
    cols: usize,
}

impl Linear {
    /// Chooses `w`'s kernel: its format, the repacked layout where the loader made one and
    /// `cpu` runs it, bf16 dot products for prefill where `bf16_prefill` and the weights are
    /// bf16.
    fn prepare(w: &TensorRef, weights: &Weights, cpu: Cpu, bf16_prefill: bool) -> Linear {
        let kernel = match w.format {
            Format::Float(Dtype::BF16) if bf16_prefill => Kernel::Bf16Dot,
            Format::Float(d) => Kernel::Float(d),
            Format::Quant(qt) if cpu.runs_repacked() && weights.repacked(w).is_some() => {
                Kernel::Repacked(qt)
            }
            Format::Quant(qt) => Kernel::Quant(qt),
        };
        Linear {
            w: w.clone(),
            kernel,
            rows: w.shape.first().copied().unwrap_or(0),
            cols: w.shape.get(1).copied().unwrap_or(0),
        }
    }
}

/// The float dtype shared by matrices that one decode row can stream in one dispatch (the
/// same kernel calls per row as separate matvecs: the same numbers), if they share one.
fn shared_float(ws: &[&TensorRef]) -> Option<Dtype> {
    match ws.first()?.format {
        Format::Float(d) if ws.iter().all(|w| w.format == Format::Float(d)) => Some(d),
        _ => None,
    }
}

/// A layer's query, key and value projections (`[q_dim | kv_dim, hidden]`), read from one input.
pub(in crate::engine) struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    /// The float dtype of all three, if they share one (one decode row: one dispatch).
    fused: Option<Dtype>,
}

/// A SwiGLU block: gate and up (`[ffn, hidden]`), down (`[hidden, ffn]`).
pub(in crate::engine) struct Ffn {
    gate: Linear,
    up: Linear,
    /// The down projection.
    pub(in crate::engine) down: Linear,
    /// The float dtype of gate and up, if they share one (one decode row: one dispatch).
    fused: Option<Dtype>,
}

impl Ffn {
    fn prepare(f: &FeedForward, weights: &Weights, cpu: Cpu, bf16_prefill: bool) -> Ffn {
        Ffn {
            gate: Linear::prepare(&f.gate_proj, weights, cpu, bf16_prefill),
            up: Linear::prepare(&f.up_proj, weights, cpu, bf16_prefill),
            down: Linear::prepare(&f.down_proj, weights, cpu, false),
            fused: shared_float(&[&f.gate_proj, &f.up_proj]),
        }
    }

    /// The block formats of gate, up and down where all three are read from the file's
    /// blocks ([`Kernel::Quant`]).
    pub(in crate::engine) fn file_blocks(&self) -> Option<[QuantType; 3]> {
        match [self.gate.kernel, self.up.kernel, self.down.kernel] {
            [Kernel::Quant(g), Kernel::Quant(u), Kernel::Quant(d)] => Some([g, u, d]),
            _ => None,
        }
    }

    /// The gate, up and down tensors.
    pub(in crate::engine) fn tensors(&self) -> [&TensorRef; 3] {
        [&self.gate.w, &self.up.w, &self.down.w]
    }

    /// The width of gate's and up's outputs.
    pub(in crate::engine) fn width(&self) -> usize {
        self.gate.w.shape[0]
    }
}

/// A layer's feed-forward block.
pub(in crate::engine) enum FfnBlock {
    /// One SwiGLU MLP.
    Dense(Ffn),
    /// A router (`[experts, hidden]`) over SwiGLU experts, each row running its `top_k` most
    /// probable, their probabilities renormalized to sum to 1 when `renormalize`.
    Moe {
        router: Linear,
        experts: Vec<Ffn>,
        routing: Routing,
    },
}

/// How a layer of experts routes each row: to its `top_k` most probable experts, their
/// probabilities renormalized to sum to 1 when `renormalize`.
#[derive(Clone, Copy)]
pub(in crate::engine) struct Routing {
    pub(in crate::engine) top_k: usize,
    pub(in crate::engine) renormalize: bool,
}

/// One layer's matrices.
pub(in crate::engine) struct LayerMats {
    /// q, k and v.
    pub(in crate::engine) qkv: Qkv,
    /// The attention output projection `[hidden, q_dim]`.
    pub(in crate::engine) o: Linear,
    /// The MLP.
    pub(in crate::engine) ffn: FfnBlock,
}

/// Every matrix of the model, prepared.
pub(in crate::engine) struct Model {
    /// Per layer.
    pub(in crate::engine) layers: Vec<LayerMats>,
    /// The head `[vocab, hidden]`.
    pub(in crate::engine) lm_head: Linear,
}

impl Model {
    /// Chooses every matrix's kernel for `cpu` (`bf16_prefill`: see
    /// [`crate::engine::EngineOptions::prefill_bf16`], for MLP gate/up matrices).
    pub(in crate::engine) fn prepare(weights: &Weights, cpu: Cpu, bf16_prefill: bool) -> Model {
        let lin = |w: &TensorRef| Linear::prepare(w, weights, cpu, false);
        let layers = weights
            .layers
            .iter()
            .map(|l| LayerMats {
                qkv: Qkv {
                    q: lin(&l.q_proj),
                    k: lin(&l.k_proj),
                    v: lin(&l.v_proj),
                    fused: shared_float(&[&l.q_proj, &l.k_proj, &l.v_proj]),
                },
                o: lin(&l.o_proj),
                ffn: match &l.mlp {
                    Mlp::Dense(f) => FfnBlock::Dense(Ffn::prepare(f, weights, cpu, bf16_prefill)),
                    Mlp::Moe {
                        router,
                        experts,
                        top_k,
                        renormalize,
                    } => FfnBlock::Moe {
                        router: lin(router),
                        experts: experts
                            .iter()
                            .map(|f| Ffn::prepare(f, weights, cpu, bf16_prefill))
                            .collect(),
                        routing: Routing {
                            top_k: *top_k,
                            renormalize: *renormalize,
                        },
                    },
                },
            })
            .collect();
        Model {
            layers,
            lm_head: lin(&weights.lm_head),
        }
    }
}

/// Runs prepared matrices over a step's rows, with the kernels' scratch (arena regions).
pub(in crate::engine) struct Matmul<'a> {
    pub(in crate::engine) pool: &'a ThreadPool,
    pub(in crate::engine) cpu: Cpu,
    pub(in crate::engine) weights: &'a Weights,
    /// The activations prepared for the float decode matvecs (`x_prep`).
    pub(in crate::engine) prep: &'a mut [f32],
    /// Prefill matmuls' packed panels.
    pub(in crate::engine) matmul_pack: &'a mut [f32],
    /// 8-bit blocks of the inputs of block-quantized matrices.
    pub(in crate::engine) quant_scratch: &'a mut [f32],
}

impl Matmul<'_> {
    /// `out = x · wᵀ` over the rows `x` (`[rows, cols]`, the first `nd` of them decode rows)
    /// into `out` (`[rows, w rows]`), by `w`'s kernel.
    pub(in crate::engine) fn rows(&mut self, w: &Linear, x: &[f32], out: &mut [f32], nd: usize) {
        let (pool, cpu) = (self.pool, self.cpu);
        let cols = w.cols;
        let wbytes = self.weights.bytes(&w.w);
        let wm = Matrix::new(wbytes, cols);
        let n = x.len() / cols.max(1);
        let width = out.len() / n.max(1);
        let (x_d, x_p) = x.split_at(nd * cols);
        let (out_d, out_p) = out.split_at_mut(nd * width);
        match w.kernel {
            Kernel::Quant(qt) | Kernel::Repacked(qt) => {
                let scratch = &mut *self.quant_scratch;
                let wq = QMatrix::new(qt, wbytes, w.rows, cols);
                match (w.kernel, self.weights.repacked(&w.w)) {
                    _ if nd == 0 => {}
                    (Kernel::Repacked(_), Some(wr)) => {
                        let wr = RepackedMatrix::new(qt, wr, w.rows, cols);
                        par::matvec_repacked_rows(pool, cpu, &wr, x_d, scratch, out_d)
                    }
                    _ => par::matvec_q_rows(pool, cpu, &wq, x_d, scratch, out_d),
                }
                if nd < n {
                    par::matmul_q(pool, cpu, &wq, x_p, scratch, out_p);
                }
            }
            Kernel::Float(d) => {
                self.float_decode(d, wm, x_d, out_d);
                if nd < n {
                    let pack = &mut *self.matmul_pack;
                    by_format!(d, W => par::matmul::<W>(pool, cpu, wm, x_p, pack, out_p));
                }
            }
            Kernel::Bf16Dot => {
                self.float_decode(Dtype::BF16, wm, x_d, out_d);
                if nd < n {
                    let pack = &mut *self.matmul_pack;
                    par::matmul_bf16dot(pool, cpu, wm, x_p, pack, out_p);
                }
            }
        }
    }

    /// The float decode matvec over the rows `x` (one row: the lone matvec; more: the weights
    /// streamed once for all, the same numbers per row).
    fn float_decode(&mut self, d: Dtype, w: Matrix<'_>, x: &[f32], out: &mut [f32]) {
        let (pool, cpu, prep) = (self.pool, self.cpu, &mut *self.prep);
        match x.len() / w.cols.max(1) {
            0 => {}
            1 => by_format!(d, W => par::matvec::<W>(pool, cpu, w.bytes, x, prep, out)),
            _ => by_format!(d, W => par::matvec_rows::<W>(pool, cpu, w, x, prep, out)),
        }
    }

    /// `q`, `k` and `v` (`[rows, q_dim | kv_dim]`) of the rows `x` (`[rows, hidden]`, the
    /// first `nd` decode rows); one decode row alone streams float q/k/v in one dispatch.
    pub(in crate::engine) fn qkv(
        &mut self,
        m: &Qkv,
        x: &[f32],
        [q, k, v]: [&mut [f32]; 3],
        nd: usize,
    ) {
        match m.fused {
            Some(d) if nd == 1 && x.len() == m.q.cols => {
                let (pool, cpu, prep, wb) = (self.pool, self.cpu, &mut *self.prep, self.weights);
                let ws = [wb.bytes(&m.q.w), wb.bytes(&m.k.w), wb.bytes(&m.v.w)];
                by_format!(d, W => par::matvec_n::<W, 3>(pool, cpu, ws, x, prep, [q, k, v]));
            }
            _ => {
                self.rows(&m.q, x, q, nd);
                self.rows(&m.k, x, k, nd);
                self.rows(&m.v, x, v, nd);
            }
        }
    }

    /// `gate` and `up` (`[rows, ffn]`) of the rows `x` (`[rows, hidden]`, the first `nd`
    /// decode rows); one decode row alone streams float gate/up in one dispatch.
    pub(in crate::engine) fn gate_up(
        &mut self,
        f: &Ffn,
        x: &[f32],
        gate: &mut [f32],
        up: &mut [f32],
        nd: usize,
    ) {
        match f.fused {
            Some(d) if nd == 1 && x.len() == f.gate.cols => {
                let (pool, cpu, prep, wb) = (self.pool, self.cpu, &mut *self.prep, self.weights);
                let ws = [wb.bytes(&f.gate.w), wb.bytes(&f.up.w)];
                by_format!(d, W => par::matvec_n::<W, 2>(pool, cpu, ws, x, prep, [gate, up]));
            }
            _ => {
                self.rows(&f.gate, x, gate, nd);
                self.rows(&f.up, x, up, nd);
            }
        }
    }
}
