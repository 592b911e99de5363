"""Running an exported ONNX directory with onnxruntime: logits, batched greedy decoding, classification,
and the parity check against the PyTorch model it came from.

    onnx = OnnxModel("out/onnx")                       # reads onnx_export.json
    answers = onnx.generate([prompt_ids, ...], max_new_tokens=32, stop_ids=[2], pad_id=2)
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError

MANIFEST = "onnx_export.json"
LOGIT_LIMIT = 1e-4
"""Largest |logit| difference the parity check accepts (against PyTorch fp32, or else against float64)."""


@dataclass
class OnnxParity:
    """onnxruntime against PyTorch on the probe inputs."""
    max_abs_logit_diff: float  # over every non-padding position (causal LM) or row (classifier)
    logit_scale: float  # max |logit| of the PyTorch reference
    greedy_equal: Optional[float] = None  # causal LM: fraction of probe prompts with identical greedy tokens
    greedy_tokens: Optional[int] = None  # tokens generated per prompt for that comparison
    labels_equal: Optional[float] = None  # classifier: fraction of texts given the same label
    # Only when max_abs_logit_diff is over the limit and a float64 copy of the model fits in memory:
    # the exact logits (the same model in float64) decide which side the rounding is on.
    onnx_vs_float64: Optional[float] = None  # max |onnxruntime - float64 PyTorch|
    torch_vs_float64: Optional[float] = None  # max |fp32 PyTorch - float64 PyTorch|: PyTorch's own rounding

    def passed(self, limit: float = LOGIT_LIMIT) -> bool:
        """Logits within `limit` of PyTorch's, or of the exact (float64) logits when PyTorch's own fp32
        rounding is what puts them over; and the same greedy tokens / labels."""
        close = self.max_abs_logit_diff <= limit or (self.onnx_vs_float64 is not None and self.onnx_vs_float64 <= limit)
        same = self.greedy_equal if self.greedy_equal is not None else self.labels_equal
        return close and same == 1.0


class OnnxModel:
    """An exported directory (model.onnx + onnx_export.json + tokenizer) under onnxruntime on the CPU."""

    def __init__(self, directory: str | os.PathLike, threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError("onnxruntime is not installed (pip install 'lorakit[export]')") from None
        self.directory = Path(directory)
        manifest = self.directory / MANIFEST
        if not manifest.is_file():
            raise InputError(f"{manifest}: not found (is {directory} a `lorakit export onnx` directory?)")
        self.spec = json.loads(manifest.read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.directory / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.task = self.spec["task"]

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.directory)

    # ---- causal LM -------------------------------------------------------------------------------
    def empty_cache(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.spec["kv_heads"], 0, self.spec["head_dim"])
        return [np.zeros(shape, np.float32) for _ in range(2 * self.spec["layers"])]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
             cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits (batch, seq, vocab), the cache grown by seq) for one call of the graph."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        feeds.update(zip(self.spec["inputs"][3:], cache))
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def prefill(self, prompts: Sequence[Sequence[int]], pad_id: int):
        """Left-pad `prompts` and run them: (logits, cache, attention_mask, last position per row)."""
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), pad_id, np.int64)
        mask = np.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        logits, cache = self.step(ids, mask, positions, self.empty_cache(len(prompts)))
        return logits, cache, mask, positions[:, -1:]

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
                 pad_id: int) -> list[list[int]]:
        """Greedy continuations of each prompt (left-padded batch, key/value cache), each ending
        before its first stop token."""
        logits, cache, mask, last = self.prefill(prompts, pad_id)
        out: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(len(prompts), bool)
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)
            for row, t in enumerate(token):
                if not done[row]:
                    if int(t) in stop_ids:
                        done[row] = True
                    else:
                        out[row].append(int(t))
            if done.all():
                break
            token = np.where(done, pad_id, token).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            last = last + 1
            logits, cache = self.step(token, mask, last, cache)
        return out

    # ---- classifier ------------------------------------------------------------------------------
    def classify_logits(self, encoded: dict) -> np.ndarray:
        """(batch, labels) logits for a tokenizer's numpy output."""
        return self.session.run(None, {name: np.asarray(encoded[name], np.int64) for name in self.spec["inputs"]})[0]


@torch.no_grad()
def check_onnx(model: nn.Module, tokenizer, onnx: OnnxModel, texts: Optional[list[str]] = None,
               greedy_tokens: int = 8, limit: float = LOGIT_LIMIT) -> OnnxParity:
    """Compare onnxruntime with `model`: logits on the probe inputs, plus greedy decoding of
    `greedy_tokens` tokens (causal LM) or the labels of `texts` (classifier; default the probe texts).
    When the logits differ by more than `limit`, both are also compared with the model run in float64
    (if that copy fits in memory): fp32 PyTorch is not exact either, and on a deep model its own
    rounding error is about 1e-4 (see `OnnxParity.passed`)."""
    from .probe import PROBE_TEXTS, probe_ids

    model = model.eval()
    if onnx.task == "sequence-classification":
        texts = texts or PROBE_TEXTS
        encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
        got = onnx.classify_logits(encoded)
        ref = model(**{k: torch.from_numpy(np.asarray(encoded[k], np.int64)) for k in onnx.spec["inputs"]}).logits
        ref = ref.float().numpy()
        parity = OnnxParity(float(np.abs(got - ref).max()), float(np.abs(ref).max()),
                            labels_equal=float((got.argmax(-1) == ref.argmax(-1)).mean()))
        inputs = {k: torch.from_numpy(np.asarray(encoded[k], np.int64)) for k in onnx.spec["inputs"]}
        return _against_float64(parity, model, inputs, got, ref, None, limit)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = probe_ids(tokenizer)
    got, _, mask, _ = onnx.prefill(prompts, pad)
    ids = np.full(mask.shape, pad, np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, mask.shape[1] - len(prompt):] = prompt
    positions = torch.from_numpy(np.clip(mask.cumsum(-1) - 1, 0, None))
    ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), position_ids=positions)
    ref = ref.logits.float().numpy()
    valid = mask.astype(bool)
    diff = float(np.abs(got - ref)[valid].max())

    from ..data.tokenize import end_of_turn_id

    stop = [t for t in {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} if t is not None]
    mine = onnx.generate(prompts, greedy_tokens, stop, pad)
    same = 0
    for prompt, tokens in zip(prompts, mine):
        x = torch.tensor([prompt])
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=greedy_tokens,
                             do_sample=False, eos_token_id=stop, pad_token_id=pad)[0, len(prompt):].tolist()
        same += out[: next((i for i, t in enumerate(out) if t in stop), len(out))] == tokens
    parity = OnnxParity(diff, float(np.abs(ref[valid]).max()), greedy_equal=same / len(prompts),
                        greedy_tokens=greedy_tokens)
    inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "position_ids": positions}
    return _against_float64(parity, model, inputs, got, ref, valid, limit)


def _available_bytes() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@torch.no_grad()
def _against_float64(parity: OnnxParity, model: nn.Module, inputs: dict, got: np.ndarray, ref: np.ndarray,
                     valid: Optional[np.ndarray], limit: float) -> OnnxParity:
    """Fill `parity`'s float64 figures when its logits missed `limit` and a float64 copy of `model`
    (twice its fp32 size; half the available memory at most) can be made."""
    if parity.max_abs_logit_diff <= limit:
        return parity
    need = 2 * sum(p.numel() * 8 for p in model.parameters())  # the copy + room for its activations
    available = _available_bytes()
    if available is None or need > available // 2:
        return parity
    exact = copy.deepcopy(model).double()
    exact_logits = exact(**inputs).logits.numpy()
    del exact
    pick = (lambda a: a[valid]) if valid is not None else (lambda a: a)
    parity.onnx_vs_float64 = float(pick(np.abs(got.astype(np.float64) - exact_logits)).max())
    parity.torch_vs_float64 = float(pick(np.abs(ref.astype(np.float64) - exact_logits)).max())
    return parity
