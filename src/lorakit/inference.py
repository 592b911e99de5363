"""Using what training produced: load a trained adapter (or a merged model dir), generate, chat.

    trained = load_trained("runs/quickstart/adapter")       # base from adapter_config.json
    print(generate(trained, "Lunch with Ana on Friday at noon."))

An adapter directory names its base in `adapter_config.json` (`base_model_name_or_path`). lorakit
writes two more files beside it that peft ignores: `base_quantization.json` for a QLoRA adapter
(it is applied to the same 4-bit base it was trained on) and `labels.json`, a classifier's label
names. `task_prefixes.json` holds the task prefixes of a multi-task run (`Trained.prefixes`; applied
by `task_prefix` when a caller names a task, see `lorakit.data.prefixes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .errors import InputError
from .files import read_json
from .io import (CONFIG_NAME, WEIGHTS_NAME, AdapterFormatError, attach_adapter, check_adapter_dir, is_adapter_dir,
                 read_base_quantization, read_config, read_stack_record, read_task_prefixes, read_weights)
from .models import ModelNotFoundError, load_causal_lm, load_classifier, resolve
from .state import set_adapter
from .train.config import Task

LABELS_NAME = "labels.json"


@dataclass
class Trained:
    model: nn.Module
    tokenizer: object
    task: Task
    base: str  # the base model's name or path
    labels: Optional[list] = None
    adapter_dir: Optional[Path] = None
    prefixes: dict[str, str] = field(default_factory=dict)  # task name -> prefix it was trained with


def task_prefix(trained: Trained, task: Optional[str], key: str = "--task") -> str:
    """The prefix `trained` was trained with for `task` ("" for None); an InputError naming `key` if it has none."""
    from .data.prefixes import prefix_for

    return prefix_for(trained.prefixes, task, key, trained.adapter_dir or trained.base)


def load_trained(path: str | Path | Sequence[str | Path], base: Optional[str] = None,
                 allow_pickle: bool = False) -> Trained:
    """An adapter directory (base loaded and adapted) or a plain model: a merged or local HF directory,
    a .gguf file or an embedded default name. `allow_pickle`: see `lorakit.io.read_weights`.

    A list of adapter directories applies them together, stacked (plain LoRA only: base + each
    update), e.g. progressive LoRA's earlier adapters and the one trained on top of them; the base
    is the last one's, `adapter_dir` the last one. A progressive adapter alone brings its stack (the
    earlier adapters named in its `stacked_on.json`)."""
    if isinstance(path, (list, tuple)):
        if len(path) > 1:
            return _load_stack([Path(p).expanduser() for p in path], base, allow_pickle)
        (path,) = path
    if is_adapter_dir(path):
        earlier = read_stack_record(Path(path).expanduser())  # progressive LoRA: the adapters under this one
        if earlier:
            return _load_stack([*earlier, Path(path).expanduser()], base, allow_pickle)
        return _load_adapter_dir(Path(path).expanduser(), base, allow_pickle)
    return _load_model(str(path))


def load_merged(path: str | Path, base: Optional[str] = None) -> Trained:
    """Like `load_trained`, but always a plain full-precision model: an adapter is merged into its
    base (a QLoRA adapter into the dequantized base), quantized linears are dequantized. What
    export and compression start from."""
    from .merge import merge_dequantized
    from .quant import dequantize

    trained = load_trained(path, base)
    if trained.adapter_dir is not None:
        trained.model, _ = merge_dequantized(trained.model)
    dequantize(trained.model)
    return trained


def _load_adapter_dir(path: Path, base: Optional[str], allow_pickle: bool = False) -> Trained:
    """Every file of the adapter is read and checked first; then the base loads and the adapter is attached."""
    config = read_config(path)
    base = base or config.base_model_name_or_path
    if not base:
        raise ModelNotFoundError(f"{path / CONFIG_NAME}: base_model_name_or_path is empty; pass --base MODEL")
    spec = read_base_quantization(path) or {}  # a QLoRA adapter runs on the same 4-bit base it trained on
    quantization, dtype = spec.get("method"), spec.get("compute_dtype", "float32")
    options = {k: spec[k] for k in ("double_quant", "blocksize") if k in spec}
    labels = read_json(path / LABELS_NAME, AdapterFormatError, expect=list) if (path / LABELS_NAME).exists() else None
    weights = read_weights(path, allow_pickle)
    if config.task_type == "SEQ_CLS":
        model, tokenizer = load_classifier(base, labels, dtype)
        task = Task.CLASSIFICATION
        if quantization:
            from .quant import quantize

            quantize(model, method=quantization, **options)
    else:
        model, tokenizer = load_causal_lm(base, dtype, quantization=quantization, quant_options=options)
        task = Task.SFT
    attach_adapter(model, config, weights, path / WEIGHTS_NAME)
    return Trained(model.eval(), tokenizer, task, base, labels, path, read_task_prefixes(path))


STACKED = "stacked_{}"
"""`load_trained` with several adapter dirs: the names of all but the last (which is "default")."""


def _load_stack(paths: list[Path], base: Optional[str], allow_pickle: bool) -> Trained:
    """Every file read and checked first; the last adapter loads with its base, then the others join it."""
    earlier = []
    for path in paths[:-1]:
        check_adapter_dir(path, f"--adapter {path}")
        earlier.append((path, read_config(path), read_weights(path, allow_pickle)))
    trained = _load_adapter_dir(paths[-1], base, allow_pickle)  # (its task prefixes: the last adapter's)
    names = []
    for i, (path, config, weights) in enumerate(earlier):
        try:
            attach_adapter(trained.model, config, weights, path / WEIGHTS_NAME, STACKED.format(i))
        except InputError as e:
            raise AdapterFormatError(f"--adapter {path}: {e}") from None
        names.append(STACKED.format(i))
    try:
        set_adapter(trained.model, [*names, "default"])
    except NotImplementedError as e:
        raise InputError(f"--adapter: {e}") from None
    trained.model.eval()
    return trained


def _load_model(name: str) -> Trained:
    """A plain model: a merged or local HF dir, a .gguf file or an embedded default name."""
    from transformers import AutoConfig

    location = resolve(name)  # a clear error for a hub id or a missing path
    config = AutoConfig.from_pretrained(location) if location.is_dir() else None
    if any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or []):
        saved = [config.id2label[i] for i in range(len(config.id2label))]  # the saved head's labels, in order
        model, tokenizer = load_classifier(name, saved)
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return Trained(model.eval(), tokenizer, Task.CLASSIFICATION, name, labels,
                       prefixes=read_task_prefixes(location))
    model, tokenizer = load_causal_lm(name)
    return Trained(model.eval(), tokenizer, Task.SFT, name,
                   prefixes=read_task_prefixes(location) if location.is_dir() else {})


def chat_messages(prompt: str, system: Optional[str] = None, history: Optional[list] = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + list(history or []) + [{"role": "user", "content": prompt}]


@torch.no_grad()
def generate(trained: Trained, prompt: str | list[dict], max_new_tokens: int = 128, temperature: float = 0.0,
             system: Optional[str] = None, on_text: Optional[Callable[[str], None]] = None) -> str:
    """The assistant's reply to `prompt` (a user message or a whole conversation).

    Greedy when temperature is 0. `on_text` receives the reply piece by piece as it is generated
    (streaming); the full reply is returned either way.
    """
    import math

    from .data.tokenize import render_ids

    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"generate: temperature {temperature!r}: expected a finite number >= 0 (0 = greedy)")
    if isinstance(prompt, str) and not prompt.strip():
        raise InputError("generate: empty prompt")
    tok = trained.tokenizer
    messages = chat_messages(prompt, system) if isinstance(prompt, str) else prompt
    ids = torch.tensor([render_ids(tok, messages, add_generation_prompt=True)])
    stop = stop_token_ids(tok)
    streamer = _CallbackStreamer(tok, on_text) if on_text else None
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    out = trained.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 eos_token_id=stop, pad_token_id=tok.pad_token_id, streamer=streamer, **sampling)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a reply: eos and the chat template's end-of-turn marker."""
    from .data.tokenize import end_of_turn_id

    return [t for t in {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} if t is not None]


@torch.no_grad()
def classify(trained: Trained, text: str) -> tuple[str, float]:
    """(label, probability) for one text."""
    probs = classify_batch(trained, [text])[0][0]
    label = max(probs, key=probs.get)
    return label, probs[label]


@torch.no_grad()
def classify_batch(trained: Trained, texts: list[str]) -> tuple[list[dict[str, float]], int]:
    """Label probabilities for each text (`{label: p}`), and the number of real tokens read."""
    enc = trained.tokenizer(texts, return_tensors="pt", truncation=True, padding=True)
    probs = trained.model(**enc).logits.float().softmax(-1)
    labels = [str(trained.labels[i]) if trained.labels else str(i) for i in range(probs.shape[-1])]
    return [dict(zip(labels, row.tolist())) for row in probs], int(enc["attention_mask"].sum())


class _CallbackStreamer:
    """A transformers streamer that hands decoded text pieces to a callback (skipping the prompt)."""

    def __init__(self, tokenizer, callback: Callable[[str], None]):
        self.tokenizer, self.callback = tokenizer, callback
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.tokens.extend(value.flatten().tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return
        self.callback(text[self.printed:])
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if len(text) > self.printed:
            self.callback(text[self.printed:])
        self.printed = len(text)
