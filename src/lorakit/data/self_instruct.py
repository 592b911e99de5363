"""`lorakit data self-instruct`: new instruction/output pairs written by a model from a few seed tasks.

The Self-Instruct loop (Wang et al., 2023), small and deterministic:

    pool = seed tasks
    until n new tasks are accepted (or max_attempts prompts were tried):
        prompt the model with k tasks sampled from the pool (k-1 seeds and one earlier new task
        once there is one) and ask for one more in the same layout (`PROMPT`)
        parse "Instruction: ... Output: ..." from each reply
        filter: parsed, instruction 3..150 words starting with a letter or digit, no word a text model
                cannot act on (`BLOCKED`), output non-empty and at most `MAX_OUTPUT_WORDS` words,
                ROUGE-L F1 against every pool instruction below `threshold`
        accepted tasks join the pool at once

ROUGE-L here is the F1 of the longest common subsequence of lower-cased word tokens. The loop
takes any ``generate(prompts) -> texts`` callable; sampling of examples uses
``random.Random(seed)``, and the model generator (`generator.model_generator`) seeds torch, so a
seed fixes the output. Written as alpaca rows (``instruction``, ``output``), new tasks only.
"""
from __future__ import annotations

import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .formats import load_dataset
from .generator import Generate
from .io import DataError, check_output_file, write_records
from .overlap import rouge_l_words, words

PROMPT = ("Come up with a new task. Here are {k} example tasks, each an instruction and its output. Write one new "
          "task that is different from them, in the same layout: a line starting with 'Instruction:' and then "
          "a line starting with 'Output:'.\n\n{examples}")
BLOCKED = {"image", "images", "picture", "pictures", "photo", "photos", "graph", "graphs", "chart", "diagram",
           "flowchart", "draw", "plot", "video", "videos", "audio", "music", "file", "files", "map", "maps", "url"}
MAX_OUTPUT_WORDS = 300


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    output: str

    def block(self) -> str:
        return f"Instruction: {self.instruction}\nOutput: {self.output}"


@dataclass
class SelfInstructResult:
    tasks: list[SeedTask]
    attempts: int = 0
    rejected: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items()))
        return f"{len(self.tasks)} new tasks from {self.attempts} prompts" + (f"; rejected: {why}" if why else "")


def parse_task(reply: str) -> Optional[SeedTask]:
    """'Instruction: X\nOutput: Y' -> SeedTask, else None. Text before the last 'Instruction:' label ahead of
    'Output:' (a preamble) is dropped; without any label the reply starts with the instruction."""
    parts = re.split(r"^\s*outputs?\s*:\s*", reply.strip(), maxsplit=1, flags=re.IGNORECASE | re.MULTILINE)
    if len(parts) != 2:
        return None
    instruction = re.split(r"\binstructions?\s*:\s*", parts[0], flags=re.IGNORECASE)[-1]
    output = re.split(r"^\s*instructions?\s*:", parts[1], maxsplit=1, flags=re.IGNORECASE | re.MULTILINE)[0]
    return SeedTask(" ".join(instruction.split()), output.strip())


def reject_reason(task: Optional[SeedTask], pool_tokens: list[list[str]], threshold: float) -> Optional[str]:
    """Why a generated task is refused (module docstring), or None to accept it."""
    if task is None:
        return "unparsable"
    tokens = words(task.instruction)
    if not 3 <= len(task.instruction.split()) <= 150:
        return "instruction length"
    if not task.instruction[0].isalnum():
        return "starts with a symbol"
    if BLOCKED & set(tokens):
        return "needs a non-text input or output"
    if not task.output.strip():
        return "empty output"
    if len(task.output.split()) > MAX_OUTPUT_WORDS:
        return "output too long"
    if any(rouge_l_words(tokens, other) >= threshold for other in pool_tokens):
        return "too similar to the pool"
    return None


def build_prompt(examples: list[SeedTask]) -> str:
    return PROMPT.format(k=len(examples), examples="\n\n".join(t.block() for t in examples))


def self_instruct(seeds: list[SeedTask], n: int, generate: Generate, seed: int = 0, k: int = 3, batch_size: int = 4,
                  threshold: float = 0.7, max_attempts: Optional[int] = None) -> SelfInstructResult:
    """Run the loop (module docstring) until ``n`` tasks are accepted or ``max_attempts`` (default 10·n) prompts
    were sent, ``batch_size`` prompts per ``generate`` call."""
    if not seeds:
        raise ValueError("self-instruct needs at least one seed task")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"ROUGE-L threshold must be in (0, 1], got {threshold}")
    rng = random.Random(seed)
    max_attempts = 10 * n if max_attempts is None else max_attempts
    pool_tokens = [words(t.instruction) for t in seeds]
    result = SelfInstructResult([])
    while len(result.tasks) < n and result.attempts < max_attempts:
        prompts = []
        for _ in range(min(batch_size, max_attempts - result.attempts)):
            examples = rng.sample(seeds, min(k - 1 if result.tasks else k, len(seeds)))
            if result.tasks:
                examples.append(rng.choice(result.tasks))
            prompts.append(build_prompt(examples))
        replies = generate(prompts)
        if len(replies) != len(prompts):
            raise ValueError(f"generate returned {len(replies)} texts for {len(prompts)} prompts")
        result.attempts += len(prompts)
        for reply in replies:
            task = parse_task(reply)
            reason = reject_reason(task, pool_tokens, threshold)
            if reason is not None:
                result.rejected[reason] += 1
                continue
            result.tasks.append(task)
            pool_tokens.append(words(task.instruction))
            if len(result.tasks) == n:
                break
    return result


def read_seed_tasks(path: str | Path, format: Optional[str] = None) -> list[SeedTask]:
    """Seed tasks from a chat data file (alpaca, sharegpt, messages): the last user turn and the reply after it."""
    dataset = load_dataset(path, format)
    if dataset.kind != "chat":
        raise DataError(f"{path}: {dataset.format} rows are not instruction/output tasks; seed tasks are chat rows "
                        "(alpaca, sharegpt or messages)")
    out = []
    for conv in dataset.rows:
        last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
        user = next(m["content"] for m in reversed(conv[:last]) if m["role"] == "user")
        out.append(SeedTask(user, conv[last]["content"]))
    return out


def self_instruct_file(seed_tasks: str | Path, n: int, output: str | Path, generate: Optional[Generate] = None,
                       model: Optional[str] = None, seed: int = 0, k: int = 3, threshold: float = 0.7,
                       temperature: float = 0.7, max_attempts: Optional[int] = None,
                       overwrite: bool = False) -> SelfInstructResult:
    """Read seed tasks, run `self_instruct` with ``generate`` (default: ``model``, the embedded SmolLM2 unless
    named, sampling at ``temperature``) and write the new tasks to ``output`` as alpaca rows."""
    if n < 1:
        raise DataError(f"self-instruct: n must be at least 1, got {n}")
    output = check_output_file(output, (seed_tasks,), overwrite)
    seeds = read_seed_tasks(seed_tasks)
    if generate is None:
        from .generator import model_generator

        generate = model_generator(model, temperature=temperature, seed=seed, max_new_tokens=192)
    result = self_instruct(seeds, n, generate, seed=seed, k=k, threshold=threshold, max_attempts=max_attempts)
    write_records(output, [{"instruction": t.instruction, "output": t.output} for t in result.tasks])
    if len(result.tasks) < n:
        warnings.warn(f"only {len(result.tasks)} of {n} tasks passed the filters in {result.attempts} prompts; "
                      "raise max_attempts (--max-attempts) or add seed tasks", stacklevel=2)
    return result
