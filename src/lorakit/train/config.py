"""The run config: every training default lives here, validated before anything heavy happens.

    lorakit train configs/x.yaml train.lr=1e-3 lora.r=16

YAML → dict → dotted overrides → `RunConfig` (unknown key: an error naming its dotted path).
"""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, create_model, field_serializer, field_validator, model_validator

from ..data.prefixes import TASK_NAME, source_task_name
from ..methods import METHODS, Method
from ..models import DEFAULT_CAUSAL_LM
from ..strict import StrictConfig
from .precision import AUTO as AUTO_DEVICE, DEVICE_PATTERN

MAX_LR = 1.0
"""Above this AdamW moves every weight by about the lr each step: a typo (1e38 overflows float32 mid-step)."""


class _Section(StrictConfig):
    """Strict types, unknown keys refused (see `lorakit.strict.StrictConfig`)."""


class ModelSection(_Section):
    name: str = Field(DEFAULT_CAUSAL_LM, min_length=1,
                      description="Embedded default name, local HF model dir, or .gguf file.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Base weight dtype. bfloat16 / float16: the trainable adapter weights stay fp32 "
                               "masters (saved in fp32); on CUDA the forward runs under autocast; float16 "
                               "adds a gradient scaler.")
    quantization: Optional[Literal["nf4", "int8"]] = Field(None, description="Quantize the frozen base (QLoRA).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class TrainSource(_Section):
    """One source of the training mix (`data.train` as a list)."""

    file: str = Field(..., min_length=1, description="Data file (json, jsonl, csv, parquet) or bundled:NAME.")
    weight: float = Field(1.0, gt=0, description="Share of each epoch's training rows drawn from this source: "
                                                 "weight / the sum of the weights (a source is cycled if short).")
    prefix: str = Field("", description="Task prefix put verbatim in front of every row's first user message "
                                        "(text rows: the text); include a trailing space or newline. Recorded "
                                        "with the adapter (task_prefixes.json) for eval / generate / serve.")
    name: Optional[str] = Field(None, pattern=f"^{TASK_NAME.pattern}$",
                                description="Task name the prefix is recorded under (default: the bundled name "
                                            "or the file's stem); `lorakit eval --data NAME=FILE`, "
                                            "`generate --task NAME` and the server's `task` apply its prefix.")

    @property
    def task(self) -> str:
        return self.name or source_task_name(self.file)


class ReplaySection(_Section):
    """Rows of earlier tasks mixed into every micro-batch (see `lorakit.data.mixing`)."""

    file: str = Field(..., min_length=1, description="Earlier tasks' data file, or bundled:NAME.")
    ratio: float = Field(..., gt=0, lt=1, description="Share of every micro-batch's token budget filled with "
                                                      "replay rows.")


class DataSection(_Section):
    train: list[TrainSource] = Field(
        ..., min_length=1, description="Training data file (json, jsonl, csv, parquet) or bundled:NAME; or a list "
                                       "of sources {file, weight, prefix, name} mixed by weight.")
    replay: Optional[ReplaySection] = Field(None, description="Earlier tasks' rows mixed into every batch: "
                                                              "{file, ratio}.")
    eval: Optional[str] = Field(None, min_length=1, description="Held-out data file, or bundled:NAME.")
    format: Optional[Literal["alpaca", "sharegpt", "messages", "text", "classification"]] = Field(
        None, description="Row format; detected from the rows when omitted.")
    max_length: int = Field(512, gt=8, description="Tokens per example; longer rows are truncated (and counted).")
    batching: Literal["packed", "grouped"] = Field(
        "grouped", description="grouped: length-grouped padded batches; packed: several samples per row.")
    max_tokens: int = Field(2048, gt=0, description="Token budget of one micro-batch (rows × padded length).")

    @field_validator("train", mode="before")
    @classmethod
    def _one_file_is_one_source(cls, v):
        return [{"file": v}] if isinstance(v, str) else v

    @field_serializer("train")
    def _one_source_as_file(self, sources: list[TrainSource]):
        if len(sources) == 1 and sources[0] == TrainSource(file=sources[0].file):
            return sources[0].file  # written back as it was given: `train: FILE`
        return [s.model_dump() for s in sources]

    @model_validator(mode="after")
    def _task_names_unique(self):
        if any(s.prefix for s in self.train):
            seen: dict[str, int] = {}
            for i, s in enumerate(self.train):
                if s.task in seen:
                    raise ValueError(f"data.train.{i}: task name {s.task!r} is also source {seen[s.task]}'s; "
                                     f"give the sources distinct `name`s (their prefixes are recorded by name)")
                seen[s.task] = i
        return self

    @property
    def task_prefixes(self) -> dict[str, str]:
        """Every source's prefix by task name, when any source has one (else {}: nothing to record)."""
        return {s.task: s.prefix for s in self.train} if any(s.prefix for s in self.train) else {}

    @property
    def mixed(self) -> bool:
        """More than one source, or a source with a prefix: `data.train` was given as a list."""
        return self.train != [TrainSource(file=self.train[0].file)]


class EwcSection(_Section):
    """Elastic weight consolidation against an earlier run (see `lorakit.train.continual`)."""

    strength: float = Field(..., alias="lambda", gt=0, description="λ of the penalty λ/2 · Σ F · (θ - θ*)².")
    run: str = Field(..., alias="from", min_length=1,
                     description="The earlier run's output_dir: its adapter/ is θ* (and this run's starting "
                                 "point), its fisher.safetensors is F (written by train.save_fisher_samples).")

    model_config = {**_Section.model_config, "populate_by_name": True, "serialize_by_alias": True}


class TrainSection(_Section):
    steps: Optional[int] = Field(None, gt=0, description="Optimizer steps; overrides epochs when set.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (when steps is not set).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, le=MAX_LR, description="Peak learning rate.")
    schedule: Literal["constant", "linear", "cosine"] = Field("cosine", description="Decay after warmup.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (matrices only).")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Gradient clipping norm; null disables.")
    loraplus_lr_ratio: Optional[float] = Field(None, gt=0, description="LoRA+: lr of B = ratio × lr of A.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept.")
    early_stopping_patience: Optional[int] = Field(None, ge=1, description="Stop after N evals without eval-loss gain.")
    seed: int = Field(0, description="Seed for init, data order and dropout.")
    log_every: int = Field(1, ge=1, description="Write metrics every N steps.")
    device: str = Field(
        AUTO_DEVICE, pattern=DEVICE_PATTERN,
        description="Where one process trains: auto (cuda:0 when CUDA is available, else cpu), cpu, cuda or "
                    "cuda:N. Under torchrun each rank takes cuda:LOCAL_RANK (auto / cuda) or the CPU (cpu). "
                    "With model.dtype bfloat16 / float16 on CUDA the forward runs under autocast, adapter "
                    "weights stay fp32 masters (float16: with a gradient scaler).")
    compile: bool = Field(
        False, description="Compile each transformer layer with torch.compile (inductor; on the CPU it needs a C++ "
                           "compiler) for the training steps: fused elementwise kernels; steps 1.07-1.08x as fast "
                           "as eager and 20% less peak memory on SmolLM2 on 2 CPU cores, after a first step that "
                           "compiles (15-65 s; cached on disk for later runs). Evaluation and generation stay eager.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="Under torchrun: ddp (replicated model, gradients all-reduced) or fsdp (FSDP2: parameters "
        "sharded per layer); auto: fsdp for full fine-tuning or a base too big for one GPU, else ddp.")
    distributed_timeout_s: float = Field(
        1800, gt=0, description="Under torchrun: seconds a rank waits for the others before the job fails.")
    init_adapter: Optional[str] = Field(
        None, min_length=1, description="Start from this adapter dir's weights (same method, rank and targets) "
                                        "instead of a fresh adapter: continue training it, e.g. on a new task.")
    save_fisher_samples: int = Field(
        0, ge=0, description="After training, write the diagonal Fisher of the adapter's trained parameters "
                             "over this many training rows to output_dir/fisher.safetensors (0: off), for a "
                             "later run's train.ewc.")
    ewc: Optional[EwcSection] = Field(
        None, description="EWC: {lambda, from: RUN_DIR}: continue RUN_DIR's adapter with the penalty "
                          "lambda/2 · Σ F (θ - θ*)² in the loss (logged as ewc_penalty).")

    @field_validator("loraplus_lr_ratio")
    @classmethod
    def _loraplus_lr_bounded(cls, v, info):
        lr = info.data.get("lr")
        if v is not None and lr is not None and v * lr > MAX_LR:
            raise ValueError(f"the B matrices' lr would be lr × {v:g} = {v * lr:g}, above {MAX_LR:g}")
        return v


class EvalSection(_Section):
    max_new_tokens: int = Field(48, gt=0, description="Generation length for exact match.")
    batch_size: int = Field(16, gt=0, description="Rows per generation batch.")
    max_samples: Optional[int] = Field(None, gt=0, description="Evaluate on at most this many held-out rows.")
    generate: bool = Field(True, description="Measure exact match of greedy generations (chat data).")
    suites: list[str] = Field(
        default_factory=list, description="Held-out files or bundled:NAMEs that `lorakit eval` scores together "
                                          "(with the run's adapter) when no --data is given; TASK=FILE applies "
                                          "the prefix of the data.train source named TASK.")


class Task(str, enum.Enum):
    """What a run trains (`task:`)."""

    SFT = "sft"  # instruction / chat SFT of a causal LM
    CLASSIFICATION = "classification"  # sequence classification (a head on an encoder or decoder)
    DISTILL = "distill"  # a causal LM learning a teacher's predictions on chat / text data (train/distill.py)


SELF_TEACHER = "self"
"""`distill.teacher: self`: the student's own model with its adapter disabled."""


class DistillSection(_Section):
    teacher: Optional[str] = Field(
        None, description="task distill: the teacher: a model dir or embedded default, an adapter dir (its base "
                          "with the adapter merged; an earlier checkpoint's adapter: self-distillation), or self "
                          "(this model with its adapter disabled). Same vocabulary as the student.")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the logit KD term (scaled by T²).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KD term; 1 - alpha weights the SFT loss.")
    hidden_weight: float = Field(0.0, ge=0, description="Weight of the hidden-state (feature) loss; 0: off.")
    hidden_layers: list[tuple[int, int]] = Field(
        [(-1, -1)], min_length=1, description="(student, teacher) hidden-state indices the feature loss matches "
                                               "through a learned projection (transformers' hidden_states: 0 = "
                                               "embeddings, -1 = last).")

    @field_validator("hidden_layers", mode="before")
    @classmethod
    def _pairs_as_tuples(cls, v):  # YAML gives [[s, t], ...]; strict types want the pairs as tuples
        return [tuple(p) if isinstance(p, list) else p for p in v] if isinstance(v, list) else v


FULL = "full"
"""`method: full`: full fine-tuning, the baseline (no adapter, every weight trains)."""
DEFAULT_METHOD = next(iter(METHODS))
"""The first registered method (LoRA): the default `method:`; full fine-tuning tolerates its section."""


class _RunChecks(_Section):
    """The whole-run checks and accessors of `RunConfig` (its fields are built from the method registry)."""

    @model_validator(mode="after")
    def _consistent(self):
        if self.task is Task.CLASSIFICATION and self.data.format not in (None, "classification"):
            raise ValueError(f"task 'classification' needs classification data, not format {self.data.format!r}")
        if self.spec is not None and self.spec.check_run is not None:
            self.spec.check_run(self.adapter, self)
        if self.task is Task.DISTILL:
            if self.distill.teacher is None:
                raise ValueError("distill.teacher: required for task distill (a model dir, an adapter dir or self)")
            if self.distill.teacher == SELF_TEACHER and self.spec is None:
                raise ValueError("distill.teacher: self is the model with its adapter disabled; method full "
                                 "trains no adapter (name a teacher model instead)")
        elif self.distill != DistillSection():
            raise ValueError(f"`distill:` settings are given but task is {self.task.value!r}; set task: distill "
                             "or remove them")
        continual = [k for k, on in (("train.init_adapter", self.train.init_adapter), ("train.ewc", self.train.ewc),
                                      ("train.save_fisher_samples", self.train.save_fisher_samples)) if on]
        if self.spec is None and self.adapter.stacked_on:
            continual.append(f"{DEFAULT_METHOD}.progressive_from")
        if continual and self.spec is None:
            raise ValueError(f"{continual[0]}: needs an adapter method; method full trains no adapter")
        ewc_start = self.train.ewc and str(Path(self.train.ewc.run) / "adapter")
        if ewc_start and self.train.init_adapter and Path(self.train.init_adapter) != Path(ewc_start):
            raise ValueError(f"train.init_adapter: EWC continues the adapter of train.ewc.from ({ewc_start}); "
                             "remove train.init_adapter or make it that adapter")
        if self.model.dtype == "float16" and self.spec is None:
            raise ValueError("model.dtype: float16 trains with a loss scaler, which needs fp32 trainable weights; "
                             "method full trains the float16 weights themselves: use bfloat16 or float32")
        if self.model.dtype == "float16" and self.train.distributed == "fsdp":
            raise ValueError("model.dtype: float16: the loss scaler checks each rank's own gradients, FSDP holds "
                             "shards of them; use bfloat16 or train.distributed: ddp")
        if self.train.distributed == "fsdp" and self.model.quantization:
            raise ValueError("train.distributed: fsdp: a quantized base lives in buffers, which FSDP does not shard; "
                             "use train.distributed: ddp (or auto)")
        for section in METHODS:
            if section == self.method or (section == DEFAULT_METHOD and self.method == FULL):
                continue  # (full ignores the default method's section, as it always did)
            if getattr(self, section) != type(self).model_fields[section].default_factory():
                raise ValueError(f"`{section}:` settings are given but method is {self.method!r}; "
                                 f"set method: {section} or remove them")
        return self

    @property
    def spec(self) -> Optional[Method]:
        """The registry record of `method` (None for full fine-tuning)."""
        return METHODS.get(self.method)

    @property
    def adapter(self):
        """The adapter config of the method: its section of the config (the default method's for full, unused)."""
        return getattr(self, self.method if self.method in METHODS else DEFAULT_METHOD)

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def start_adapter(self) -> Optional[Path]:
        """The adapter the run starts from: `train.init_adapter`, or EWC's earlier run's adapter (None: fresh)."""
        if self.train.init_adapter:
            return Path(self.train.init_adapter).expanduser()
        return Path(self.train.ewc.run).expanduser() / "adapter" if self.train.ewc else None


def _method_help() -> str:
    return ("The PEFT method, each with its own section of the same name: "
            + ", ".join(f"{name} ({m.config.__name__})" for name, m in METHODS.items())
            + "; or full (full fine-tuning, the baseline).")


RunConfig = create_model(
    "RunConfig", __base__=_RunChecks, __module__=__name__,
    task=(Task, Field(Task.SFT, strict=False, description="Instruction SFT, sequence classification, or "
                                                          "distillation from a teacher (distill: section).")),
    method=(Literal[(*METHODS, FULL)], Field(DEFAULT_METHOD, description=_method_help())),
    model=(ModelSection, Field(default_factory=ModelSection)),
    **{name: (m.config, Field(default_factory=m.config, description=f"Used with method: {name} "
                              f"({m.config.__name__}; peft's field names)."))
       for name, m in METHODS.items()},
    data=(DataSection, ...),
    train=(TrainSection, Field(default_factory=TrainSection)),
    eval=(EvalSection, Field(default_factory=EvalSection)),
    distill=(DistillSection, Field(default_factory=DistillSection, description="Used with task: distill.")),
    output_dir=(str, Field("runs/latest", min_length=1, description="Where adapters, checkpoints and logs go.")),
)
RunConfig.__doc__ = """A whole run: task, method, model, the method's section, data, train, eval, distill, output_dir.

Built from the method registry: every `lorakit.methods.METHODS` entry adds its `method:` value and
its config section."""
