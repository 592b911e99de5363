"""`lorakit data augment`: more rows by rewording each row's request; answers are never touched.

Only the request varies: alpaca's ``instruction``, or the last user turn of a messages / sharegpt
conversation. The output (the last assistant reply), system prompt, ``input`` and earlier turns
are copied as they are. Each row is followed by up to ``n_per_row`` variants that differ from it
and from each other (after normalisation); a row no rule applies to gets none.

    rules   `paraphrase_rules`: synonyms, phrase and clause order, request framing; seeded with
            ``random.Random(seed)``, so the same file and seed give the same output anywhere
    model   a local model is asked to reword the request (`PARAPHRASE_PROMPT`); a reply is kept
            when it is one non-empty line, new, at most `MAX_GROWTH` times longer, and still holds
            every word of the request that the answer repeats (names, numbers); others are counted
            as rejected by reason
"""
from __future__ import annotations

import copy
import enum
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from .dedupe import normalize_text
from .formats import normalize_records
from .generator import Generate
from .io import DataError, check_output_file, read_records, write_records
from .paraphrase_rules import paraphrase, protected_words


class AugmentMethod(str, enum.Enum):
    RULES = "rules"
    MODEL = "model"


PARAPHRASE_PROMPT = ("Reword the request below. Keep every name, number and detail, and do not answer it. "
                     "Reply with the reworded request only, on one line.\n\nRequest: {text}")
MAX_GROWTH = 3.0
ATTEMPTS_PER_VARIANT = 4  # rules: tries per wanted variant before giving up on a row


@dataclass
class AugmentResult:
    rows: int
    variants: int
    method: AugmentMethod
    rejected: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        return (f"{self.rows} rows, {self.variants} new variants ({self.method.value})"
                + (f"; rejected: {why}" if why else ""))


def _request_slot(row: dict, fmt: str) -> tuple[Any, Any]:
    """(container, key) of the text to vary in a raw row: alpaca's instruction or the last user turn."""
    if fmt == "alpaca":
        return row, "instruction"
    turns, role_key, text_key = (row["messages"], "role", "content") if fmt == "messages" else \
        (row["conversations"], "from", "value")
    last = max(i for i, m in enumerate(turns) if m[role_key] in ("user", "human"))
    return turns[last], text_key


def _with_request(row: dict, fmt: str, text: str) -> dict:
    new = copy.deepcopy(row)
    slot, key = _request_slot(new, fmt)
    slot[key] = text
    return new


def _answer(conversation: list[dict]) -> str:
    return next(m["content"] for m in reversed(conversation) if m["role"] == "assistant")


def rule_variants(text: str, answer: str, n: int, rng: random.Random) -> list[str]:
    """Up to ``n`` distinct rule paraphrases of ``text`` (none equal to it after normalisation)."""
    seen, out = {normalize_text(text)}, []
    if not text.strip():
        return out
    protected = protected_words(answer)
    for _ in range(n * ATTEMPTS_PER_VARIANT):
        if len(out) == n:
            break
        candidate = paraphrase(text, rng, protected)
        if normalize_text(candidate) not in seen:
            seen.add(normalize_text(candidate))
            out.append(candidate)
    return out


def clean_model_reply(reply: str) -> str:
    """The reworded request out of a model's reply: the first non-empty line, without a 'Request:' label or quotes."""
    line = next((l.strip() for l in reply.splitlines() if l.strip()), "")
    line = re.sub(r"^(reworded |rewritten |new )?request\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip('"\u201c\u201d').strip()


def judge_model_reply(reply: str, text: str, answer: str, seen: set[str]) -> tuple[Optional[str], Optional[str]]:
    """(paraphrase, None) when ``reply`` is a usable rewording of ``text``, else (None, reason)."""
    candidate = clean_model_reply(reply)
    if not candidate:
        return None, "empty"
    if normalize_text(candidate) in seen:
        return None, "unchanged or repeated"
    if len(candidate) > MAX_GROWTH * len(text) + 40:
        return None, "too long"
    words = {w.lower() for w in re.findall(r"\w+", candidate)}
    kept = {w.lower() for w in re.findall(r"\w+", text)} & protected_words(answer)
    if not kept <= words:
        return None, "lost a detail the answer needs"
    return candidate, None


def augment_file(source: str | Path, output: str | Path, method: AugmentMethod = AugmentMethod.RULES,
                 n_per_row: int = 2, seed: int = 0, format: Optional[str] = None, keep_original: bool = True,
                 generate: Optional[Generate] = None, model: Optional[str] = None, overwrite: bool = False,
                 temperature: float = 0.7) -> AugmentResult:
    """Write ``source``'s rows, each followed by its variants (module docstring), to ``output`` (.jsonl/.json).

    ``method`` model uses ``generate`` (prompts -> replies) or builds one from ``model`` (default: the embedded
    SmolLM2) sampling at ``temperature`` with torch seeded by ``seed``. ``keep_original=False`` writes variants only."""
    method = AugmentMethod(method)
    if method is AugmentMethod.RULES and model is not None:
        raise InputError("--model goes with --method model; the rules need no model")
    if n_per_row < 1:
        raise DataError(f"augment: n_per_row must be at least 1, got {n_per_row}")
    output = check_output_file(output, (source,), overwrite)
    records = read_records(source)
    dataset = normalize_records(records, format, source=str(source))
    if dataset.kind != "chat":
        raise DataError(f"{source}: {dataset.format} rows have no request to reword (augment takes alpaca, sharegpt "
                        "or messages rows)")
    result = AugmentResult(len(records), 0, method)
    requests = [_request_slot(r.row, dataset.format) for r in records]
    texts = [slot[key] for slot, key in requests]
    answers = [_answer(c) for c in dataset.rows]
    if method is AugmentMethod.RULES:
        rng = random.Random(seed)
        variants = [rule_variants(t, a, n_per_row, rng) for t, a in zip(texts, answers)]
    else:
        if generate is None:
            from .generator import model_generator

            generate = model_generator(model, temperature=temperature, seed=seed)
        variants = _model_variants(texts, answers, n_per_row, generate, result.rejected)
    out = []
    for rec, found in zip(records, variants):
        out += ([rec.row] if keep_original else []) + [_with_request(rec.row, dataset.format, v) for v in found]
        result.variants += len(found)
    write_records(output, out)
    return result


def _model_variants(texts: list[str], answers: list[str], n: int, generate: Generate,
                    rejected: Counter) -> list[list[str]]:
    """``n`` prompts per row in one call, then each reply judged (`judge_model_reply`)."""
    prompts = [PARAPHRASE_PROMPT.format(text=t) for t in texts for _ in range(n)]
    replies = generate(prompts)
    if len(replies) != len(prompts):
        raise ValueError(f"generate returned {len(replies)} texts for {len(prompts)} prompts")
    out = []
    for i, (text, answer) in enumerate(zip(texts, answers)):
        seen, found = {normalize_text(text)}, []
        for reply in replies[i * n:(i + 1) * n]:
            candidate, reason = judge_model_reply(reply, text, answer, seen)
            if candidate is None:
                rejected[reason] += 1
                continue
            seen.add(normalize_text(candidate))
            found.append(candidate)
        out.append(found)
    return out
