"""Everything a run needs before its first step: validated data, the model with its adapter, batches.

Order matters for the user: data files are read and every row validated *before* the model is
loaded, so a bad row fails in a second, not after a minute of model loading.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..inject import inject
from ..data.batching import BatchLoader, grouped_batches, packed_batches
from ..data.formats import Dataset, empty_targets, load_dataset
from ..data.mixing import mixed_batches
from ..data.prefixes import with_prefix
from ..data.io import DataError, data_path
from ..errors import InputError
from ..data.tokenize import EncodeStats, build_label_map, encode_classification, encode_dataset
from ..models import load_causal_lm, load_classifier
from .config import RunConfig, Task
from .continual import attach_progressive, check_inputs, load_start, stack_progressive
from .distill import build_distiller, check_teacher
from .losses import causal_lm_loss_sum, classification_loss_sum

LOSSES: dict[Task, Callable] = {Task.SFT: causal_lm_loss_sum, Task.CLASSIFICATION: classification_loss_sum}
"""The loss of each task; distillation's is built per run (`distill.build_distiller`: it holds the teacher)."""
DATA_KINDS = {Task.SFT: ("chat", "text"), Task.CLASSIFICATION: ("classification",), Task.DISTILL: ("chat", "text")}
PEFT_TASK_TYPES = {Task.SFT: "CAUSAL_LM", Task.CLASSIFICATION: "SEQ_CLS", Task.DISTILL: "CAUSAL_LM"}
HEAD_NAMES = ("classifier", "score")


@dataclass
class Data:
    train: Dataset  # every training source's rows, in order (task prefixes applied)
    eval: Optional[Dataset]
    labels: Optional[list] = None  # classification label names, index = class id
    parts: list[Dataset] = field(default_factory=list)  # the sources of `data.train`, one Dataset each
    replay: Optional[Dataset] = None  # `data.replay`'s rows

    def __post_init__(self):
        self.parts = self.parts or [self.train]


@dataclass
class Prepared:
    model: nn.Module
    tokenizer: Any
    train_batches: BatchLoader
    eval_batches: Optional[BatchLoader]
    eval_conversations: list = field(default_factory=list)
    loss_sum: Callable = causal_lm_loss_sum
    stats: dict = field(default_factory=dict)
    labels: Optional[list] = None
    aux: Optional[nn.Module] = None  # what the loss trains besides the model (distillation's projections)
    train_examples: list = field(default_factory=list)  # the encoded training rows (no replay rows)


def load_data(config: RunConfig) -> Data:
    """Read and validate every row of the training sources, the replay file and the eval file.

    Rows with an empty target (blank text or assistant replies) are counted and warned about;
    a training file where every row is empty is refused.
    """
    dc = config.data
    keys = ["data.train"] if not dc.mixed else [f"data.train.{i}.file" for i in range(len(dc.train))]
    parts = [with_prefix(load_dataset(data_path(s.file, key), dc.format), s.prefix) for s, key in zip(dc.train, keys)]
    replay = load_dataset(data_path(dc.replay.file, "data.replay.file"), dc.format) if dc.replay else None
    evals = load_dataset(data_path(dc.eval, "data.eval"), dc.format) if dc.eval else None
    for ds in filter(None, (*parts, replay, evals)):
        if ds.kind not in DATA_KINDS[config.task]:
            if config.task is Task.CLASSIFICATION:
                raise DataError(f"{ds.source}: task 'classification' needs 'text' and 'label' in every row; "
                                f"these are {ds.format} rows without a 'label'")
            raise DataError(f"{ds.source}: {ds.kind} data cannot train task {config.task.value!r}")
        empty = empty_targets(ds)
        if empty == len(ds) and ds is not evals:
            raise DataError(f"{ds.source}: all {len(ds)} rows have an empty target (blank text or assistant "
                            "replies): nothing to train on")
        if empty:
            warnings.warn(f"{ds.source}: {empty} of {len(ds)} rows have an empty target (blank text or assistant "
                          "replies); they train on nothing", stacklevel=2)
    train = parts[0] if len(parts) == 1 else Dataset(
        " + ".join(p.source for p in parts), parts[0].format, parts[0].kind, [r for p in parts for r in p.rows])
    labels = None
    if config.task is Task.CLASSIFICATION:
        try:
            label_map = build_label_map([r["label"] for r in train.rows])
        except DataError as e:
            raise DataError(f"{train.source}: {e}") from None
        if len(label_map) < 2:
            raise DataError(f"{train.source}: only one label ({next(iter(label_map))!r}); classification needs at "
                            "least two")
        unseen = sorted({str(r["label"]) for r in (evals.rows if evals else [])} - {str(l) for l in label_map})
        if unseen:
            raise DataError(f"{evals.source}: labels not in the training data: {', '.join(unseen[:5])}")
        labels = list(label_map)
        if replay is not None:
            unseen = sorted({str(r["label"]) for r in replay.rows} - {str(l) for l in label_map})
            if unseen:
                raise DataError(f"{replay.source}: labels not in the training data: {', '.join(unseen[:5])}")
    return Data(train, evals, labels, parts, replay)


def load_model(config: RunConfig, labels: Optional[list] = None):
    """(model, tokenizer) with the base quantized if asked; no adapter yet.

    A causal LM is quantized layer by layer while it loads (peak memory ≈ the quantized model);
    a classifier (small encoders, with a freshly initialised head) is quantized after loading.
    """
    quantization = config.model.quantization
    if config.task is not Task.CLASSIFICATION:
        return load_causal_lm(config.model.name, config.model.dtype, quantization=quantization)
    model, tokenizer = load_classifier(config.model.name, labels, config.model.dtype)
    if quantization:
        from ..quant import quantize

        quantize(model, method=quantization)
    return model, tokenizer


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: LoRA weights still get grads)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns there
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def attach_method(model: nn.Module, config: RunConfig) -> list[str]:
    """An adapter method: inject its adapter (a classifier's head goes to modules_to_save), on top of
    progressive LoRA's frozen earlier adapters when the config names some. Full: unfreeze all. Either way, gradient checkpointing is switched on when the config asks for it."""
    if config.model.gradient_checkpointing:
        enable_checkpointing(model)
    if config.spec is None:  # full fine-tuning
        for p in model.parameters():
            p.requires_grad_(True)
        return []
    adapter = config.adapter
    update = {"task_type": adapter.task_type or PEFT_TASK_TYPES[config.task]}
    if config.task is Task.CLASSIFICATION and not adapter.modules_to_save:
        heads = [h for h in HEAD_NAMES if hasattr(model, h)]
        update["modules_to_save"] = heads[:1] or None
    if adapter.base_model_name_or_path is None:
        update["base_model_name_or_path"] = config.model.name
    earlier = attach_progressive(model, config)  # progressive LoRA: earlier adapters, frozen
    try:
        names = inject(model, adapter.model_copy(update=update))
    except InputError as e:  # a selector naming no module of this model: say which section it is in
        raise InputError(f"{config.method}: {e}") from None
    stack_progressive(model, earlier)
    return names


def encode(config: RunConfig, tokenizer, data: Data) -> tuple[list, list, dict]:
    """Tokenised (train sources, eval) examples and the encoding stats of each split; the train examples
    are one list per source (`data.parts`), then the replay examples when `data.replay` is set."""
    def one(ds: Dataset) -> tuple[list, EncodeStats]:
        if config.task is Task.CLASSIFICATION:
            label_map = {l: i for i, l in enumerate(data.labels)}
            return encode_classification(tokenizer, ds.rows, config.data.max_length, label_map)
        return encode_dataset(tokenizer, ds, config.data.max_length)

    train, stats = [], {}
    for ds in data.parts:
        examples, part_stats = one(ds)
        if not examples:
            raise DataError(f"{ds.source}: no example left with a target token after truncation")
        train.append(examples)
        stats["train"] = part_stats if "train" not in stats else stats["train"].plus(part_stats)
    if data.replay is not None:
        replay, stats["replay"] = one(data.replay)
        if not replay:
            raise DataError(f"{data.replay.source}: no example left with a target token after truncation")
        train.append(replay)
    evals, stats["eval"] = one(data.eval) if data.eval else ([], None)
    return train, evals, stats


def train_batches(config: RunConfig, sources: list[list], pad_id: int) -> BatchLoader:
    """The training batches: one source without replay as `batches`; else mixed by weight with replay
    in every batch (`lorakit.data.mixing`)."""
    dc = config.data
    if not dc.mixed and dc.replay is None:
        return batches(config, sources[0], pad_id, config.train.seed)
    replay = sources[-1] if dc.replay is not None else None
    train = sources[:-1] if replay is not None else sources
    packed = dc.batching == "packed" and config.task is not Task.CLASSIFICATION
    longest = max(len(e) for s in sources for e in s)
    return mixed_batches(train, [s.weight for s in dc.train], replay, dc.replay.ratio if dc.replay else 0.0,
                         "packed" if packed else "grouped", dc.max_tokens, max(dc.max_length, longest), pad_id,
                         config.train.seed)


def batches(config: RunConfig, examples: list, pad_id: int, seed: int, for_eval: bool = False) -> BatchLoader:
    """Token-budget batches: packed rows or length-grouped padded rows (classification: grouped)."""
    budget = max(config.data.max_tokens, max(len(e) for e in examples))
    if config.data.batching == "packed" and config.task is not Task.CLASSIFICATION and not for_eval:
        return packed_batches(examples, max(config.data.max_length, max(len(e) for e in examples)), budget, pad_id, seed)
    return grouped_batches(examples, budget, pad_id, seed)


def prepare(config: RunConfig, data: Optional[Data] = None) -> Prepared:
    data = data or load_data(config)
    if config.task is Task.DISTILL:
        check_teacher(config.distill.teacher)  # a wrong path fails before any model loads
    check_inputs(config)  # earlier adapters, runs and Fisher files, before any model loads
    torch.manual_seed(config.train.seed)
    model, tokenizer = load_model(config, data.labels)
    attach_method(model, config)
    load_start(model, config)  # train.init_adapter / train.ewc.from: continue that adapter
    loss_sum, aux = LOSSES.get(config.task), None
    if config.task is Task.DISTILL:
        loss_sum = aux = build_distiller(config.distill, model, tokenizer)
    train, evals, stats = encode(config, tokenizer, data)
    pad = tokenizer.pad_token_id
    conversations = [r for r in data.eval.rows][: config.eval.max_samples] if data.eval and data.eval.kind == "chat" else []
    return Prepared(
        model=model, tokenizer=tokenizer,
        train_batches=train_batches(config, train, pad),
        eval_batches=batches(config, evals[: config.eval.max_samples], pad, 0, for_eval=True) if evals else None,
        eval_conversations=conversations, loss_sum=loss_sum, stats=stats, labels=data.labels, aux=aux,
        train_examples=[e for part in train[: len(data.parts)] for e in part],
    )

