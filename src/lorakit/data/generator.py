"""A text generator over a local model, for the data tools that write with one (augment, self-instruct).

The tools take any ``generate(prompts) -> texts`` callable (tests inject a stub); this builds the real
one from a model name (the embedded SmolLM2 by default, a model directory, a .gguf file or an adapter
directory) through `lorakit.inference`. Greedy at temperature 0; otherwise sampling from torch's
generator seeded once here, so the same prompts in the same order give the same texts.
"""
from __future__ import annotations

from typing import Callable, Optional

Generate = Callable[[list[str]], list[str]]


def model_generator(model: Optional[str] = None, temperature: float = 0.7, seed: int = 0,
                    max_new_tokens: int = 128) -> Generate:
    """``generate(prompts)``: each prompt is one user turn, answered by the model's chat template."""
    import torch

    from ..inference import generate, load_trained
    from ..models import DEFAULT_CAUSAL_LM

    from ..errors import InputError
    from ..train.config import Task

    trained = load_trained(model or DEFAULT_CAUSAL_LM)
    if trained.task is not Task.SFT:
        raise InputError(f"--model {model}: a {trained.task.value} model cannot generate text; name a causal LM")
    torch.manual_seed(seed)

    def run(prompts: list[str]) -> list[str]:
        return [generate(trained, p, max_new_tokens=max_new_tokens, temperature=temperature) for p in prompts]

    return run
