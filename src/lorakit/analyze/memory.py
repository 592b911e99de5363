"""Training-memory estimator for a decoder-only Llama-family model (`lorakit analyze memory`).

Everything is counted in bytes from the model's shapes and the run's settings; nothing is fitted.
Notation: d hidden size, q = heads · head_dim, k = kv_heads · head_dim, i intermediate size,
h heads, L layers, V vocabulary, b bytes of the training dtype (4 float32, 2 bfloat16), f = 4
(fp32), r the LoRA rank, n tokens in one micro-batch.

Components (what lorakit's trainer allocates; `train/loop.py`, `train/losses.py`, `tuners/lora.py`):

* **weights**: embeddings, norms and the head in dtype; the decoder linears in dtype, or NF4 for
  QLoRA: ⌈m/64⌉·32 B of 4-bit codes + ⌈m/64⌉ int8 block scales + ⌈m/64/256⌉·4 B + 4 B per m-weight
  matrix (`quant/nf4.py`, double quantization), ≈ 0.516 B per weight.
* **adapter**: r·(in + out) per adapted linear, in dtype. **gradients**: one per trainable value, in
  dtype (a tied head and embedding counted once). **optimizer**: AdamW keeps two moments, SGD with
  momentum one, each like its parameter.
* **activations**: the tensors autograd saves in the forward for the backward, per token and
  layer (`layer_tensors`): the RMSNorm input in fp32 and its 1/rms; the norm output where a
  linear needs it (a LoRA A or a trained weight: the frozen base alone saves no input); each LoRA
  A's scaled output (r); with dropout, the dropped copy and its mask (1 byte) per adapted
  linear; q and k after RoPE, v, SDPA's output and its fp32 log-sum-exp per head (CPU flash
  kernel: no n×n matrix); gate, SiLU(gate), up, and their product where down_proj needs it.
  Full fine-tuning adds the normalised input of each norm (its weight trains). Plus the final
  norm. With gradient checkpointing (non-reentrant, per decoder layer): each layer's input
  (b·d) and one layer recomputed in the backward (its saved and temporary tensors).
* **retained** (the allocator): tensors freed in the forward are not given back to the OS by
  glibc's malloc: blocks below its dynamic mmap threshold (raised to the largest block freed, up
  to 32 MiB) go back to the heap, and a heap page is returned only when nothing above it is
  live. Without checkpointing each layer's temporaries (base and LoRA products before their sum,
  the norm's pow and x·rsqrt, RoPE's halves, q and k before RoPE, down_proj's output...) are
  freed between saved tensors allocated after them, so all of them stay resident: counted whole,
  L × temporaries. With checkpointing nothing is saved inside a layer and its temporaries are
  reused by the next layer, except the layer's peak working set (three i-sized MLP tensors,
  gate/SiLU/up) that the kept layer output pins: L × 3·i·b. (This term is read off the measured
  checkpointed runs, not derived from the op list like the others, and it is a central value, not a
  bound: the same run kept 1.9 to 4.0 such working sets per layer in different processes, a spread of
  about ±15% of the checkpointed peaks; `benchmarks/memory_estimator.py --repeats`.)
* **loss**: the fused head + cross-entropy (`linear_cross_entropy_sum`) forms fp32 logits
  CHUNK_ELEMENTS at a time (+ a copy in dtype when b ≠ 4), and keeps the hidden states' gradient
  (targets × d) from forward to backward; full fine-tuning also keeps the head's weight gradient
  (V × d). Every token is taken as a target (text data; chat data masks prompts: fewer).
* **transient**: QLoRA dequantizes one matrix at a time (int64 byte indices 4 B + the values b B
  per weight) in forward and backward; the optimizer step (single-tensor AdamW on CPU: two
  temporaries the size of the largest parameter) and, in full fine-tuning, the embedding's dense
  gradient before it is added to the tied head's.
* **runtime**: the tokenizer, data and loader state after loading: 64 MiB (SmolLM2's 49k-token
  tokenizer measured 45–70 MiB above the post-import baseline).

Two moments compete for the peak: the end of the forward (weights, adapter, optimizer states,
activations, retained, loss, forward transient, runtime; gradients are freed between steps) and
the optimizer step (weights, adapter, gradients, optimizer states, step transient, runtime).
The estimate is the larger. CUDA's caching allocator also keeps freed blocks, but packs them
differently: the `retained` term is a CPU (glibc) figure, left out for `device=cuda` (which also
leaves out the CUDA context, a few hundred MB). Only the CPU figures were measured
(`benchmarks/memory_estimator.py`).
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ..files import read_json

MIB = 1 << 20
GIB = 1 << 30
FP32 = 4
RUNTIME_BYTES = 64 * MIB
"""Tokenizer, data and loader state after loading (see the module docstring)."""
NF4_BLOCK = 64
NF4_SCALE_BLOCK = 256
MLP_WORKING_SET = 3
"""i-sized tensors live at once in a layer's MLP forward (gate, SiLU(gate), up) kept under checkpointing."""


class ShapeError(InputError):
    """A model name, config file or config key the estimator cannot use."""


class Method(str, enum.Enum):
    LORA = "lora"
    QLORA = "qlora"
    FULL = "full"


class Optimizer(str, enum.Enum):
    ADAMW = "adamw"
    SGD = "sgd"  # with momentum


OPTIMIZER_STATES = {Optimizer.ADAMW: 2, Optimizer.SGD: 1}
"""Tensors like each trainable parameter that the optimizer keeps."""


class Dtype(str, enum.Enum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


DTYPE_BYTES = {Dtype.FLOAT32: 4, Dtype.BFLOAT16: 2, Dtype.FLOAT16: 2}


class Device(str, enum.Enum):
    """Where the run trains: decides the allocator term (`retained`)."""

    CPU = "cpu"  # glibc malloc: freed forward temporaries stay resident (validated against peak RSS)
    CUDA = "cuda"  # caching allocator: freed blocks are reused across layers; not modelled, not validated


class Role(str, enum.Enum):
    """The linear layers of a Llama decoder layer (peft target names)."""

    Q = "q_proj"
    K = "k_proj"
    V = "v_proj"
    O = "o_proj"
    GATE = "gate_proj"
    UP = "up_proj"
    DOWN = "down_proj"


ALL_LINEAR = frozenset(Role)


class Moment(str, enum.Enum):
    FORWARD_END = "end of the forward"
    OPTIMIZER_STEP = "optimizer step"


# ---- shapes ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs from a Llama-family config.json."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    def linear_shapes(self) -> dict[Role, tuple[int, int]]:
        """(in, out) of each linear of one decoder layer."""
        d, q, k, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {Role.Q: (d, q), Role.K: (d, k), Role.V: (d, k), Role.O: (q, d),
                Role.GATE: (d, i), Role.UP: (d, i), Role.DOWN: (i, d)}

    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.linear_shapes().values()) + 2 * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + head + self.layers * per_layer + self.hidden


BUNDLED_SHAPES = ("llama-2-7b", "llama-2-13b", "llama-2-70b")
"""Well-known shapes shipped as config JSON under lorakit/analyze/shapes (no weights)."""
REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def shape_from_config(config: dict, source: str) -> ModelShape:
    """A Llama-family config dict → ModelShape; a missing or bad key is a ShapeError naming `source`."""
    if not isinstance(config, dict):
        raise ShapeError(f"{source}: expected a JSON object (a model config.json)")
    for key in REQUIRED_KEYS:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ShapeError(f"{source}: key {key!r} must be a positive integer, got {value!r}")
    if "num_local_experts" in config or "num_experts" in config:
        raise ShapeError(f"{source}: mixture-of-experts configs are not modelled (dense Llama-family decoders only)")
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if not isinstance(kv_heads, int) or heads % kv_heads:
        raise ShapeError(f"{source}: key 'num_key_value_heads' must divide num_attention_heads, got {kv_heads!r}")
    return ModelShape(name=source, hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                      layers=config["num_hidden_layers"], heads=heads, kv_heads=kv_heads, head_dim=int(head_dim),
                      vocab=config["vocab_size"], tied=bool(config.get("tie_word_embeddings", False)))


def load_shape(name_or_config: str) -> ModelShape:
    """A bundled shape name (`llama-2-7b` ...), a config.json file, a model directory, or a model
    lorakit loads (an embedded default, a .gguf file): its ModelShape. Reads the config only."""
    key = name_or_config.lower()
    if key in BUNDLED_SHAPES:
        text = resources.files(__package__).joinpath("shapes", f"{key}.json").read_text()
        return shape_from_config(json.loads(text), key)
    path = Path(name_or_config).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise ShapeError(f"--model {name_or_config}: file not found")
        return shape_from_config(read_json(path, ShapeError), str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ShapeError(f"--model {name_or_config}: no config.json in this directory")
        return shape_from_config(read_json(path / "config.json", ShapeError), str(path / "config.json"))
    from ..models import EMBEDDED, local_dir

    if key in EMBEDDED or path.suffix == ".gguf":
        config = local_dir(name_or_config) / "config.json"
        return shape_from_config(read_json(config, ShapeError), name_or_config)
    raise ShapeError(f"--model {name_or_config}: not a bundled shape ({', '.join(BUNDLED_SHAPES)}), a config.json, "
                     f"a model directory or an embedded model ({', '.join(EMBEDDED)})")


# ---- per-layer tensors -------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerTensors:
    """Bytes per token of one decoder layer's forward: kept for the backward, and freed in the forward."""

    saved: float
    temporary: float


def nf4_bytes(weights: int) -> int:
    """Bytes of one NF4 matrix of `weights` values (blocks of 64, double-quantized scales)."""
    blocks = -(-weights // NF4_BLOCK)
    return blocks * NF4_BLOCK // 2 + blocks + -(-blocks // NF4_SCALE_BLOCK) * FP32 + FP32


def layer_tensors(shape: ModelShape, method: Method, r: int, b: int, targets: frozenset = ALL_LINEAR,
                  lora_dropout: float = 0.0) -> LayerTensors:
    """Saved and temporary bytes per token of one decoder layer (HF Llama, SDPA), dtype of `b` bytes."""
    d, i = shape.hidden, shape.intermediate
    q, k = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    full = method is Method.FULL
    adapted = frozenset() if full else frozenset(targets)
    shapes = shape.linear_shapes()
    saved = temp = 0.0

    def linear(role: Role) -> None:
        """A linear's own allocations (its output is accounted by the caller)."""
        nonlocal saved, temp
        if role not in adapted:
            return
        inp, out = shapes[role]
        temp += out * b + r * b  # base output before the sum, A·x before scaling
        saved += r * b  # scaling·A·x, saved for B's gradient
        if lora_dropout > 0:
            saved += inp * b + inp  # the dropped input (saved by A instead of x) and its mask

    def needs_input(*roles: Role) -> bool:
        return full or any(role in adapted for role in roles)

    def norm(output_saved: bool) -> None:
        nonlocal saved, temp
        saved += FP32 * d + FP32  # the input in fp32 (for pow) and 1/rms
        temp += FP32 * d + 2 * FP32  # pow, mean, + eps
        if full and b == FP32:
            saved += FP32 * d  # x·rsqrt, for the norm weight's gradient
        else:
            temp += FP32 * d
            if b != FP32:
                saved, temp = (saved + b * d, temp) if full else (saved, temp + b * d)  # cast back to dtype
        if output_saved:
            saved += b * d
        else:
            temp += b * d

    # attention block
    norm(needs_input(Role.Q, Role.K, Role.V))
    for role, width in ((Role.Q, q), (Role.K, k)):
        linear(role)
        temp += width * b  # the projection (RoPE saves only cos/sin)
        temp += 3.5 * width * b  # x·cos, -x2, cat (rotate_half), rotate·sin
        saved += width * b  # after RoPE, saved by SDPA
    linear(Role.V)
    saved += k * b  # v, saved by SDPA
    saved += q * b + FP32 * shape.heads  # SDPA output (also o_proj's input) and log-sum-exp
    linear(Role.O)
    temp += d * b  # o_proj output, added to the residual
    if b != FP32:
        temp += 2 * d * b  # the residual sums in dtype (the norms keep fp32 copies)
    # MLP block
    norm(needs_input(Role.GATE, Role.UP))
    linear(Role.GATE)
    linear(Role.UP)
    saved += 3 * i * b  # gate (SiLU's input), SiLU(gate), up (the product's operands)
    if needs_input(Role.DOWN):
        saved += i * b
    else:
        temp += i * b
    linear(Role.DOWN)
    temp += d * b  # down_proj output
    return LayerTensors(saved, temp)


# ---- the estimate --------------------------------------------------------------------------------

@dataclass
class MemoryEstimate:
    """Bytes per component; `total` is the larger of the two moments (see the module docstring)."""

    model: str
    method: Method
    dtype: Dtype
    r: int
    batch_tokens: int
    gradient_checkpointing: bool
    optimizer: Optimizer
    device: Device
    parameters: int
    trainable: int
    weights: float
    adapter: float
    gradients: float
    optimizer_states: float
    activations: float
    retained: float
    loss: float
    forward_transient: float
    step_transient: float
    runtime: float = RUNTIME_BYTES
    notes: list[str] = field(default_factory=list)

    def forward_end(self) -> float:
        return (self.weights + self.adapter + self.optimizer_states + self.activations + self.retained + self.loss
                + self.forward_transient + self.runtime)

    def optimizer_step(self) -> float:
        return self.weights + self.adapter + self.gradients + self.optimizer_states + self.step_transient + self.runtime

    @property
    def moment(self) -> Moment:
        return Moment.FORWARD_END if self.forward_end() >= self.optimizer_step() else Moment.OPTIMIZER_STEP

    @property
    def total(self) -> float:
        return max(self.forward_end(), self.optimizer_step())

    def components(self) -> dict[str, float]:
        """Each component's size in bytes (whether or not it is live at the peak moment)."""
        return {"weights": self.weights, "adapter": self.adapter, "gradients": self.gradients,
                "optimizer": self.optimizer_states, "activations": self.activations, "retained": self.retained,
                "loss": self.loss, "transient": self.forward_transient if self.moment is Moment.FORWARD_END
                else self.step_transient, "runtime": self.runtime}

    def at_peak(self) -> dict[str, bool]:
        """Which components are counted in `total`."""
        forward = self.moment is Moment.FORWARD_END
        return {"weights": True, "adapter": True, "gradients": not forward, "optimizer": True,
                "activations": forward, "retained": forward, "loss": forward, "transient": True, "runtime": True}

    def to_dict(self) -> dict:
        out = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}
        out.update(total=self.total, peak_moment=self.moment.value, components=self.components(),
                   at_peak=self.at_peak())
        return out


def estimate_memory(shape: ModelShape, method: Method, r: int = 16, batch_tokens: int = 4096,
                    gradient_checkpointing: bool = False, dtype: Dtype = Dtype.FLOAT32,
                    optimizer: Optimizer = Optimizer.ADAMW, targets: frozenset = ALL_LINEAR,
                    lora_dropout: float = 0.0, device: Device = Device.CPU) -> MemoryEstimate:
    """Peak training memory of one micro-batch of `batch_tokens` tokens (see the module docstring).

    `targets`: the adapted linears of every layer (LoRA / QLoRA). No term depends on the sequence
    length alone: SDPA's fused kernel keeps no length × length matrix.
    """
    if r <= 0 or batch_tokens <= 0:
        raise ShapeError(f"r and batch_tokens must be positive, got r={r}, batch_tokens={batch_tokens}")
    try:  # plain strings from Python callers become the enums here
        method, dtype, optimizer, device = Method(method), Dtype(dtype), Optimizer(optimizer), Device(device)
        targets = frozenset(Role(t) for t in targets)
    except ValueError as e:
        raise ShapeError(str(e)) from None
    b = DTYPE_BYTES[dtype]
    d, L, V = shape.hidden, shape.layers, shape.vocab
    shapes = shape.linear_shapes()
    adapted = frozenset() if method is Method.FULL else frozenset(targets)
    linear_weights = sum(a * o for a, o in shapes.values())
    embed = V * d * (1 if shape.tied else 2)
    norms = (2 * L + 1) * d
    if method is Method.QLORA:
        weights = (embed + norms) * b + L * sum(nf4_bytes(a * o) for a, o in shapes.values())
    else:
        weights = (embed + norms + L * linear_weights) * b
    adapter_params = L * sum(r * (shapes[role][0] + shapes[role][1]) for role in adapted)
    trainable = shape.parameters() if method is Method.FULL else adapter_params
    largest = max(V * d, *(a * o for a, o in shapes.values())) if method is Method.FULL else \
        max((r * max(shapes[role]) for role in adapted), default=0)

    per_layer = layer_tensors(shape, method, r, b, targets, lora_dropout)
    n = batch_tokens
    final_norm = (FP32 * d + FP32) * n
    if gradient_checkpointing:
        activations = L * b * d * n + (per_layer.saved + per_layer.temporary) * n + final_norm
        retained = L * MLP_WORKING_SET * shape.intermediate * b * n
    else:
        activations = L * per_layer.saved * n + final_norm
        retained = L * per_layer.temporary * n
    from ..train.losses import CHUNK_ELEMENTS

    chunk = min(CHUNK_ELEMENTS, n * V)
    loss = chunk * FP32 + (chunk * b if b != FP32 else 0) + 2 * n * d * b  # logits chunk; hidden rows + their grad
    if method is Method.FULL:
        loss += V * d * b  # the head's weight gradient, kept from the forward to the backward
    forward_transient = 0.0
    if method is Method.QLORA:
        forward_transient = max(a * o for a, o in shapes.values()) * (4 + b)  # byte indices + dequantized values
    step_transient = 2 * largest * b
    if method is Method.FULL:
        step_transient = max(step_transient, V * d * b)  # the embedding's dense gradient
    notes = []
    if device is Device.CUDA:
        retained = 0.0
        notes.append("cuda: allocator retention and the CUDA context are not counted (the CPU figures are the "
                     "measured ones)")
    if method is not Method.FULL and not adapted:
        notes.append("no adapted linear: nothing trains")
    return MemoryEstimate(
        model=shape.name, method=method, dtype=dtype, r=r, batch_tokens=batch_tokens,
        gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, device=device,
        parameters=shape.parameters(),
        trainable=trainable, weights=weights, adapter=adapter_params * b if method is not Method.FULL else 0.0,
        gradients=trainable * b, optimizer_states=OPTIMIZER_STATES[optimizer] * trainable * b,
        activations=activations, retained=retained, loss=loss, forward_transient=forward_transient,
        step_transient=step_transient, notes=notes)


# ---- published figures -------------------------------------------------------------------------

@dataclass(frozen=True)
class Published:
    """A figure tutorials quote, with where it comes from."""

    model: str
    method: Method
    gigabytes: float
    source: str
    setting: str


PUBLISHED = (
    Published("llama-2-7b", Method.FULL, 160, "LLaMA-Factory README, hardware table (7B, 16-bit)", "full, 16-bit"),
    Published("llama-2-13b", Method.FULL, 320, "LLaMA-Factory README, hardware table (13B, 16-bit)", "full, 16-bit"),
    Published("llama-2-7b", Method.LORA, 16, "LLaMA-Factory README, hardware table (7B, 16-bit)", "LoRA, 16-bit"),
    Published("llama-2-13b", Method.LORA, 32, "LLaMA-Factory README, hardware table (13B, 16-bit)", "LoRA, 16-bit"),
    Published("llama-2-70b", Method.LORA, 160, "LLaMA-Factory README, hardware table (65B, 16-bit)", "LoRA, 16-bit"),
    Published("llama-2-7b", Method.QLORA, 6, "LLaMA-Factory README, hardware table (7B, 4-bit)", "QLoRA 4-bit"),
    Published("llama-2-13b", Method.QLORA, 12, "LLaMA-Factory README, hardware table (13B, 4-bit)", "QLoRA 4-bit"),
    Published("llama-2-70b", Method.QLORA, 48, "QLoRA paper (Dettmers et al. 2023): 65B on one 48 GB GPU; "
              "LLaMA-Factory README: 48 GB (65B, 4-bit)", "QLoRA 4-bit"),
    Published("llama-2-70b", Method.FULL, 780, "QLoRA paper (Dettmers et al. 2023): >780 GB to fine-tune 65B "
              "in 16-bit", "full, 16-bit"),
    Published("llama-2-70b", Method.FULL, 1200, "LLaMA-Factory README, hardware table (65B, 16-bit)", "full, 16-bit"),
)
"""Figures for 65B models are set against the bundled 70B shape (the nearest one bundled)."""


def published_for(model: str, method: Method) -> list[Published]:
    return [p for p in PUBLISHED if p.model == model and p.method is method]


def format_estimate(est: MemoryEstimate) -> str:
    """A readable table: components (MiB / GiB), which are live at the peak, the total and published figures."""
    def size(x: float) -> str:
        return f"{x / GIB:8.2f} GiB" if x >= GIB else f"{x / MIB:8.1f} MiB"

    lines = [f"{est.model}: {est.method.value}, {est.dtype.value}, r={est.r}, {est.batch_tokens} tokens per "
             f"micro-batch, gradient checkpointing {'on' if est.gradient_checkpointing else 'off'}, "
             f"{est.optimizer.value}, {est.device.value}",
             f"parameters {est.parameters:,}, trainable {est.trainable:,} "
             f"({100 * est.trainable / max(est.parameters, 1):.3f}%)", ""]
    peak = est.at_peak()
    for name, value in est.components().items():
        lines.append(f"  {name:<12} {size(value)}{'' if peak[name] else '   (not live at the peak)'}")
    lines += ["", f"  {'peak':<12} {size(est.total)}   (at the {est.moment.value})"]
    lines += [f"note: {n}" for n in est.notes]
    quoted = published_for(est.model, est.method)
    if quoted:
        lines.append("")
        lines.append("published figures for comparison (GPU, 16-bit, their own batch and sequence settings):")
        lines += [f"  {p.setting}: {p.gigabytes:g} GB — {p.source}" for p in quoted]
    return "\n".join(lines)
