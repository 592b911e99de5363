"""Could transformers' own continuous batching carry `lorakit serve`? Its ContinuousBatchingManager
(what `generate_batch` runs: paged KV cache, requests packed into one row) against lorakit's engine
on the same work, in one process.

SmolLM2-135M-Instruct fp32, the base model only (transformers' manager has no per-request adapter),
N chat prompts submitted at once, greedy, `--max-tokens` new tokens each. Reported: wall time,
generated tokens/s, and how many replies equal `lorakit.inference.generate` alone (batch of one).
Rounds alternate the two engines; the ratio is the median of per-round ratios.

    flock /tmp/lorakit-heavy.lock env OMP_WAIT_POLICY=PASSIVE python benchmarks/serving_engines.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import paired_ratio  # noqa: E402
from serving import messages  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.utils import logging

    from lorakit.data.tokenize import render_ids
    from lorakit.inference import Trained, generate, stop_token_ids
    from lorakit.models import load_causal_lm
    from lorakit.serve.engine import Engine, Request, SamplingParams

    logging.set_verbosity_error()
    model, tok = load_causal_lm(args.model)
    stop = stop_token_ids(tok)
    prompts = [render_ids(tok, messages(i), add_generation_prompt=True) for i in range(args.requests)]
    alone = [generate(Trained(model, tok, "sft", "base"), messages(i), args.max_tokens) for i in range(args.requests)]

    def hf_batch():
        """A manager sized for this work (a default one sizes its static tensors from free memory: a
        minute of zero-filling on CPU), started per round so that the model's attention goes back to
        sdpa for the other engine; only the generation is timed."""
        config = GenerationConfig(max_new_tokens=args.max_tokens, do_sample=False, eos_token_id=stop,
                                  pad_token_id=tok.pad_token_id)
        sizes = ContinuousBatchingConfig(num_blocks=4 * args.requests, max_batch_tokens=2048)
        manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=sizes)
        manager.start()
        try:
            start = time.perf_counter()
            ids = manager.add_requests(prompts, max_new_tokens=args.max_tokens)
            results = {}
            while len(results) < len(ids):
                result = manager.get_result(timeout=5)
                if result is not None and result.is_finished():
                    results[result.request_id] = result
            wall = time.perf_counter() - start
        finally:
            manager.stop(block=True)
        outs = [results[i].generated_tokens for i in ids]
        texts = [tok.decode([t for t in x if t not in stop], skip_special_tokens=True) for x in outs]
        return texts, sum(map(len, outs)), wall

    def lorakit_engine():
        engine = Engine(model, tok, max_batch=32, max_model_len=2048).start()
        texts, done, left = [""] * len(prompts), threading.Event(), [len(prompts)]
        tokens = [0]

        def sink(i):
            def put(event):
                texts[i] += event.text
                if event.finish_reason:
                    tokens[0] += event.completion_tokens
                    left[0] -= 1
                    if not left[0]:
                        done.set()
            return put
        start = time.perf_counter()
        for i, ids in enumerate(prompts):
            engine.submit(Request(ids, None, SamplingParams(args.max_tokens), frozenset(stop), sink(i)))
        done.wait()
        wall = time.perf_counter() - start
        engine.shutdown(1)
        return texts, tokens[0], wall

    runs = {"transformers CB": hf_batch, "lorakit engine": lorakit_engine}
    samples = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up (and the equality check)
        texts, _, _ = fn()
        same = sum(a.strip() == b for a, b in zip(texts, alone))
        print(f"{name}: {same} of {len(texts)} replies equal lorakit generate alone", flush=True)
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            _, tokens, wall = runs[name]()
            samples[name].append(tokens / wall)
            print(f"round {r + 1} {name}: {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tok/s", flush=True)
    for name, s in samples.items():
        print(f"{name}: median {statistics.median(s):.1f} tok/s")
    ratio = paired_ratio(samples["lorakit engine"], samples["transformers CB"])
    print(f"lorakit engine / transformers CB tokens/s: {ratio:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
