"""Adapter configs with peft's field names (they are also the on-disk format).

They derive from `StrictConfig` (lorakit/strict.py): unknown fields, wrong types and non-finite
numbers are errors. `LoraConfig.from_peft_dict` (used when reading `adapter_config.json`) warns
about and drops fields written by newer peft versions instead of crashing. Run configs are read
from YAML by lorakit/yamlconfig.py.
"""
from __future__ import annotations

import enum
import re
import warnings
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Optional, Union

from pydantic import Field, field_validator, model_validator

from .strict import StrictConfig, check_regex

TargetSpec = Union[list[str], str, None]
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
LayerIndex = Annotated[int, Field(ge=0)]


class Bias(enum.Enum):
    """Which biases train and are saved with an adapter (`config.bias_mode`)."""

    NONE = "none"
    ALL = "all"  # every bias of the model
    ADAPTED = "adapted"  # the biases of the adapted layers (peft: "lora_only", "vera_only")


BIAS_MODES = {"none": Bias.NONE, "all": Bias.ALL, "lora_only": Bias.ADAPTED, "vera_only": Bias.ADAPTED}
"""peft's `bias` strings → their meaning."""


class InitKind(enum.Enum):
    KAIMING = "kaiming"  # True: Kaiming-uniform A, zero B (the identity)
    GAUSSIAN = "gaussian"  # normal A, zero B
    RANDOM = "random"  # False: random A and B (tests)
    PISSA = "pissa"  # principal singular factors of W (tuners/pissa.py)


class LoraInit(NamedTuple):
    """`init_lora_weights` parsed (`LoraConfig.init`); `niter`: PiSSA's subspace iterations (None: full SVD)."""

    kind: InitKind
    niter: Optional[int] = None


_PISSA = re.compile(r"pissa(?:_niter_(\d+))?")


def parse_lora_init(value: Union[bool, str]) -> LoraInit:
    """True, False, 'gaussian', 'pissa' or 'pissa_niter_<k>' → a `LoraInit` (ValueError otherwise)."""
    if isinstance(value, bool):
        return LoraInit(InitKind.KAIMING if value else InitKind.RANDOM)
    if value == "gaussian":
        return LoraInit(InitKind.GAUSSIAN)
    m = _PISSA.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"init_lora_weights={value!r}: expected True, False, 'gaussian', 'pissa' or 'pissa_niter_<k>'")
    return LoraInit(InitKind.PISSA, int(m.group(1)) if m.group(1) else None)


class PeftFormatConfig(StrictConfig):
    """Shared by the adapter configs: peft's on-disk JSON in and out (`PEFT_TYPE` names the method).

    Module selectors are checked here, the same for every method: a list of names may not hold empty
    names (and `target_modules` may not be an empty list), a string must compile as a regex, and
    pattern keys (`rank_pattern`, `alpha_pattern`) must compile too.
    """

    PEFT_TYPE: ClassVar[str] = "LORA"
    PEFT_EXTRAS: ClassVar[dict] = {}
    TRAINER_ONLY: ClassVar[frozenset] = frozenset()
    """Fields that shape a training run but not the adapter: never written to adapter_config.json."""

    @property
    def stacked_on(self) -> list[str]:
        """Adapter dirs applied frozen under this adapter while it trains (progressive LoRA); [] for most."""
        return []

    @classmethod
    def from_peft_dict(cls, data: dict[str, Any], source: str = "adapter_config.json"):
        """Build from a peft-written config: unknown keys warn (newer peft), wrong values raise pydantic's
        ValidationError (`validation_message` makes it one line)."""
        known = set(cls.model_fields)
        ignored = set(cls.PEFT_EXTRAS) | {"peft_type", "peft_version", "auto_mapping"}
        inert = {k: v for k, v in PEFT_INERT_DEFAULTS.items() if data.get(k) == v}
        unknown = sorted(k for k in data if k not in known | ignored | set(inert) and data[k] not in (None, False, {}, []))
        if unknown:
            warnings.warn(f"{source}: ignoring fields lorakit does not know: {', '.join(unknown)}", stacklevel=2)
        kept = {k: v for k, v in data.items() if k in known and v is not None}
        return cls.model_validate(kept)

    @field_validator("target_modules", "exclude_modules", check_fields=False)
    @classmethod
    def _selector(cls, v, info):
        if isinstance(v, list):
            if not v and info.field_name == "target_modules":
                raise ValueError("empty list: give module names, a regex or 'all-linear' (or leave it unset)")
            if any(not name.strip() for name in v):
                raise ValueError(f"{v!r} holds an empty module name")
        elif isinstance(v, str) and v != "all-linear":
            check_regex(v)
        return v

    @field_validator("layers_to_transform", check_fields=False)
    @classmethod
    def _layers_as_list(cls, v):
        return [v] if isinstance(v, int) else v

    @field_validator("layers_pattern", check_fields=False)
    @classmethod
    def _layer_list_names(cls, v):
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not all(n.strip() for n in v)):
            raise ValueError("empty layer-list name")
        return v

    @property
    def bias_mode(self) -> Bias:
        """`bias` as a `Bias` (methods without a bias option: Bias.NONE)."""
        return BIAS_MODES[getattr(self, "bias", "none")]

    def to_peft_dict(self) -> dict[str, Any]:
        """The adapter_config.json contents peft expects for this method."""
        out = self.model_dump(exclude=set(self.TRAINER_ONLY))
        out.update(self.PEFT_EXTRAS, peft_type=self.PEFT_TYPE, inference_mode=True)
        if isinstance(out.get("target_modules"), list):
            out["target_modules"] = sorted(set(out["target_modules"]))
        return out


class LoraConfig(PeftFormatConfig):
    """Where to put LoRA adapters and how they are shaped and initialised."""

    PEFT_EXTRAS: ClassVar[dict] = {"lora_bias": False, "layer_replication": None, "loftq_config": {},
                                   "megatron_config": None, "megatron_core": "megatron.core", "revision": None}
    TRAINER_ONLY: ClassVar[frozenset] = frozenset({"progressive_from", "orthogonal_lambda"})

    r: int = Field(8, gt=0, description="Rank of the update B·A.")
    lora_alpha: float = Field(
        8, gt=0, description="Scale numerator: scaling = lora_alpha / r (or / sqrt(r) with use_rslora).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: TargetSpec = Field(
        None,
        description="Module names (exact or dotted suffix), a regex (full match) or 'all-linear'. "
        "None: the preset for the model's architecture.",
    )
    exclude_modules: TargetSpec = Field(None, description="Names (exact or suffix) or a regex of modules never adapted.")
    layers_to_transform: Union[list[LayerIndex], LayerIndex, None] = Field(
        None, description="Only adapt these layer indices.")
    layers_pattern: Union[list[str], str, None] = Field(
        None, description="Name of the layer list (e.g. 'layers', 'h') used with layers_to_transform."
    )
    rank_pattern: dict[str, PositiveInt] = Field(
        default_factory=dict, description="Per-module rank overrides (name or regex).")
    alpha_pattern: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Per-module alpha overrides (name or regex).")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train and are saved.")
    modules_to_save: list[str] | None = Field(
        None, description="Whole modules (e.g. a classification head) trained and saved with the adapter."
    )
    init_lora_weights: Union[bool, str] = Field(
        True, description="True: Kaiming-uniform A, zero B (identity). 'gaussian': normal A. False: random B too "
        "(tests). 'pissa' / 'pissa_niter_<k>': principal singular factors of W (full / randomized SVD), residual "
        "left in the base (tuners/pissa.py).",
    )
    use_rslora: bool = Field(False, description="scaling = lora_alpha / sqrt(r) (rank-stabilised LoRA).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): a trained magnitude per output row.")
    fan_in_fan_out: bool = Field(False, description="Base weight stored (in, out), like GPT-2's Conv1D; detected automatically.")
    task_type: str | None = Field(None, description="peft task type, e.g. CAUSAL_LM or SEQ_CLS.")
    base_model_name_or_path: str | None = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(False, description="Written by peft; adapters load frozen unless is_trainable.")
    progressive_from: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Trainer only (progressive LoRA): earlier plain LoRA adapter dirs loaded "
        "frozen and applied under the new adapter (base + each update + the new one's); only the new one is "
        "saved. Not written to adapter_config.json.")
    orthogonal_lambda: float = Field(
        0.0, ge=0, description="Trainer only (O-LoRA, with progressive_from): λ of λ · Σ_layers Σ_earlier "
        "||A_new A_earlierᵀ||² in the loss (logged as orthogonal_penalty); 0: off.")

    @property
    def stacked_on(self) -> list[str]:
        return self.progressive_from

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _pattern_keys(cls, v):
        for key in v:
            check_regex(key)
        return v

    @field_validator("init_lora_weights")
    @classmethod
    def _known_init(cls, v):
        parse_lora_init(v)
        return v

    @property
    def init(self) -> LoraInit:
        """`init_lora_weights` as a typed value."""
        return parse_lora_init(self.init_lora_weights)

    @field_validator("modules_to_save")
    @classmethod
    def _dedupe(cls, v):
        return list(dict.fromkeys(v)) if v else v

    def rank_for(self, module_name: str) -> int:
        return _pattern_value(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return _pattern_value(self.alpha_pattern, module_name, self.lora_alpha)


PEFT_EXTRAS = LoraConfig.PEFT_EXTRAS
"""Fields peft writes for LoRA that lorakit does not use; written so peft reads our files as its own."""
PEFT_INERT_DEFAULTS = {"qalora_group_size": 16}
"""Options of other peft methods that peft writes with non-empty defaults; they change nothing at these values."""


class VeraConfig(PeftFormatConfig):
    """VeRA (Kopiczko et al. 2024): shared frozen random A, B; per-layer trained vectors (peft's field names)."""

    PEFT_TYPE: ClassVar[str] = "VERA"
    PEFT_EXTRAS: ClassVar[dict] = {"revision": None}

    r: int = Field(256, gt=0, description="Rank of the shared random projections.")
    target_modules: TargetSpec = Field(None, description="As LoraConfig.target_modules (Linear-like layers only).")
    exclude_modules: TargetSpec = Field(None, description="Names (exact or suffix) or a regex of modules never adapted.")
    projection_prng_key: int = Field(0, description="Seed of the shared A (r, max_in) and B (max_out, r).")
    save_projection: bool = Field(True, description="Store A and B in the adapter file (else regenerated from the seed).")
    vera_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    d_initial: float = Field(0.1, description="Initial value of every lambda_d entry.")
    fan_in_fan_out: bool = Field(False, description="Detected automatically (GPT-2 Conv1D).")
    bias: Literal["none", "all", "vera_only"] = Field("none", description="Which biases train and are saved.")
    modules_to_save: list[str] | None = Field(None, description="Whole modules trained and saved with the adapter.")
    init_weights: bool = Field(True, description="True: lambda_b = 0 (identity). False: random lambdas (tests).")
    layers_to_transform: Union[list[LayerIndex], LayerIndex, None] = Field(
        None, description="Only adapt these layer indices.")
    layers_pattern: Union[list[str], str, None] = Field(None, description="Name of the layer list.")
    task_type: str | None = Field(None, description="peft task type.")
    base_model_name_or_path: str | None = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(False, description="Written by peft.")


class AdaLoraConfig(PeftFormatConfig):
    """AdaLoRA (Zhang et al. 2023): SVD-form adapters whose ranks are pruned to a budget (peft's field names).

    Rank budget: `init_r` per layer for `tinit` steps, cubic decrease to `target_r` (on average) at
    `total_step - tfinal`, then fixed; masks are recomputed every `deltaT` steps. See tuners/adalora.py.
    """

    PEFT_TYPE: ClassVar[str] = "ADALORA"
    PEFT_EXTRAS: ClassVar[dict] = {**LoraConfig.PEFT_EXTRAS, "use_dora": False, "r": 8}

    init_r: int = Field(12, gt=0, description="Initial rank of every adapted layer.")
    target_r: int = Field(8, gt=0, description="Average rank per layer at the end of the budget schedule.")
    tinit: int = Field(0, ge=0, description="Steps of warm-up at init_r before pruning starts.")
    tfinal: int = Field(0, ge=0, description="Final steps with the budget fixed at target_r.")
    deltaT: int = Field(1, gt=0, description="Steps between two budget allocations.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA coefficient of the sensitivity.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA coefficient of the uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality regulariser on P and Q.")
    total_step: int | None = Field(
        None, gt=0, description="Total training steps of the budget schedule (the trainer fills in its step count).")
    lora_alpha: float = Field(
        8, ge=0, description="ΔW is scaled by lora_alpha / init_r (init_r also after pruning; 0: scaling 1, as peft).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: TargetSpec = Field(None, description="As LoraConfig.target_modules (Linear-like layers only).")
    exclude_modules: TargetSpec = Field(None, description="Names (exact or suffix) or a regex of modules never adapted.")
    layers_to_transform: Union[list[LayerIndex], LayerIndex, None] = Field(
        None, description="Only adapt these layer indices.")
    layers_pattern: Union[list[str], str, None] = Field(None, description="Name of the layer list.")
    rank_pattern: dict[str, list[bool]] | None = Field(
        None, description="After pruning: '<module>.lora_E' -> kept-triplet mask (peft's format)."
    )
    alpha_pattern: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Unused by AdaLoRA; peft writes it.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train and are saved.")
    modules_to_save: list[str] | None = Field(None, description="Whole modules trained and saved with the adapter.")
    init_lora_weights: bool = Field(
        True, description="True: E = 0, A and B ~ N(0, 0.02) (identity). False: all three ~ N(0, 1) (tests).")
    use_rslora: bool = Field(False, description="Unused by AdaLoRA; peft writes it.")
    fan_in_fan_out: bool = Field(False, description="Detected automatically (GPT-2 Conv1D).")
    task_type: str | None = Field(None, description="peft task type.")
    base_model_name_or_path: str | None = Field(None, description="Where the base model came from.")
    inference_mode: bool = Field(False, description="Written by peft.")

    @model_validator(mode="after")
    def _target_within_init(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r={self.target_r} is above init_r={self.init_r}: the rank budget only shrinks "
                             "(set target_r <= init_r)")
        return self


def matches(spec: TargetSpec, name: str) -> bool:
    """True when module `name` is selected by a list of names (exact or dotted suffix) or a regex string."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def pattern_matches(key: str, name: str) -> bool:
    """True when a `rank_pattern` / `alpha_pattern` key (a name, dotted suffix or regex) selects module `name`."""
    return (name == key or name.endswith("." + key)
            or bool(re.fullmatch(key, name) or re.fullmatch(rf"(.*\.)?{key}", name)))


def _pattern_value(patterns: dict, name: str, default):
    return next((value for key, value in patterns.items() if pattern_matches(key, name)), default)
