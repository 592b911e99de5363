"""The inputs every parity check runs: a few texts, plain and as a chat prompt (fixed, so figures compare)."""
from __future__ import annotations

PROBE_TEXTS = ["Dinner with Priya on Friday at 7pm.", "The quick brown fox jumps over 13 lazy dogs!\n  Done."]


def probe_ids(tokenizer) -> list[list[int]]:
    """Token ids of the probe texts (with the tokenizer's special tokens) and of one chat prompt."""
    from ..data.tokenize import render_ids

    ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in PROBE_TEXTS]
    ids.append(render_ids(tokenizer, [{"role": "user", "content": PROBE_TEXTS[0]}], add_generation_prompt=True))
    return ids
