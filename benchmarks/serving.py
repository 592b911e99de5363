"""Serving many adapters: `lorakit serve` under concurrent clients vs one request at a time, and vs
the tutorials' approach (one process with peft: `set_adapter` per request, `generate` one by one).

SmolLM2-135M-Instruct (fp32) with 8 LoRA adapters (r=16, alpha=32, all linear layers, random B
factors, std 0.01: they change the answers without wrecking them), written to a temporary
directory. The server runs as a subprocess (`python -m lorakit serve --adapter a0=DIR ...`) on
127.0.0.1; clients are asyncio tasks using the `openai` client with streaming, greedy decoding,
chat prompts of ~40-70 tokens (system + user) and up to `--max-tokens` new tokens.

Scenarios, each run once per round, rounds interleaved with a rotating order:
- `one-at-a-time`: 8 requests (one per adapter) sent to lorakit one after the other;
- `8 clients`: 8 concurrent clients, each on its own adapter, `--requests` requests each in turn;
- `32 clients`: 32 concurrent clients (4 per adapter), one request each;
- `peft`: the 8 requests of `one-at-a-time` in this process with peft (set_adapter + generate).

Reported per scenario: aggregate generated tokens/s, time to first token p50/p95 and request
latency p50/p95 (medians over rounds); ratios are medians of per-round ratios. The goal:
8 clients ≥ 3× one-at-a-time tokens/s.

    flock /tmp/lorakit-heavy.lock env OMP_WAIT_POLICY=PASSIVE python benchmarks/serving.py
    python benchmarks/serving.py --quick      # 1 round, fewer tokens: a smoke run
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import paired_ratio  # noqa: E402

import lorakit  # noqa: E402

ADAPTERS = [f"a{i}" for i in range(8)]
SYSTEM = "You are a helpful assistant. Answer in a few clear sentences, without lists."
TOPICS = ["why the sky is blue", "how bread rises", "what a compiler does", "how bees make honey",
          "why we have seasons", "how a bicycle stays upright", "what causes tides", "how vaccines work",
          "why leaves change colour in autumn", "how a refrigerator keeps food cold", "what an atom is made of",
          "how airplanes fly", "why the ocean is salty", "how the heart pumps blood", "what rain is",
          "how a battery stores energy", "why cats purr", "how glass is made", "what makes a rainbow",
          "how plants drink water", "why ice floats", "how a camera takes a picture", "what a volcano is",
          "how sound travels", "why the moon has phases", "how coffee is grown", "what an earthquake is",
          "how the internet sends a message", "why we sleep", "how a lighthouse works", "what wind is",
          "how paper is recycled"]


def make_adapters(root: Path, base: str) -> None:
    from lorakit.models import load_causal_lm

    model, _ = load_causal_lm(base)
    g = torch.Generator().manual_seed(0)
    for name in ADAPTERS:
        lorakit.inject(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), adapter_name=name)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, lorakit.tuners.lora.LoraWrapper) and name in module.adapters:
                    b = module.adapters[name].lora_B
                    b.copy_(torch.randn(b.shape, generator=g) * 0.01)
        lorakit.save_adapter(model, root / name, adapter_name=name)
        lorakit.delete_adapter(model, name)


def messages(i: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} to a curious twelve-year-old."}]


def start_server(root: Path, base: str, port: int, threads: int, cpu_weights: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "lorakit", "serve", "--model", base, "--port", str(port), "--max-batch", "32",
            "--cpu-weights", cpu_weights]
    for name in ADAPTERS:
        args += ["--adapter", f"{name}={root / name}"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        print(f"  server: {line.rstrip()}", flush=True)
        if "ready at" in line:
            # keep draining its output: a full pipe would block the server
            threading.Thread(target=lambda: [print(f"  server: {x.rstrip()}", flush=True) for x in proc.stdout],
                             daemon=True).start()
            return proc
    raise RuntimeError(f"the server exited with {proc.wait()}")


async def _request(client, adapter: str, i: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, tokens, text = None, 0, []
    stream = await client.chat.completions.create(model=adapter, messages=messages(i), max_tokens=max_tokens,
                                                  temperature=0, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens, "text": "".join(text)}


async def _clients(url: str, jobs_per_client: list[list[tuple[str, int]]], max_tokens: int):
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900)

    async def run(jobs):
        return [await _request(client, adapter, i, max_tokens) for adapter, i in jobs]
    start = time.perf_counter()
    per_client = await asyncio.gather(*(run(jobs) for jobs in jobs_per_client))
    wall = time.perf_counter() - start
    await client.close()
    return [r for rs in per_client for r in rs], wall


def summarize(results: list[dict], wall: float) -> dict:
    def pct(key, q):
        values = sorted(r[key] for r in results)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]
    return {"tok/s": sum(r["tokens"] for r in results) / wall, "ttft p50": pct("ttft", 0.5),
            "ttft p95": pct("ttft", 0.95), "latency p50": pct("latency", 0.5), "latency p95": pct("latency", 0.95),
            "tokens": sum(r["tokens"] for r in results), "wall": wall, "texts": [r["text"] for r in results]}


class PeftBaseline:
    """The tutorials' server loop: one peft model, set_adapter per request, generate one at a time."""

    def __init__(self, root: Path, base: str):
        import peft

        from lorakit.inference import stop_token_ids
        from lorakit.models import load_causal_lm

        base, self.tokenizer = load_causal_lm(base)
        with warnings.catch_warnings(action="ignore"):
            self.model = peft.PeftModel.from_pretrained(base, root / ADAPTERS[0], adapter_name=ADAPTERS[0]).eval()
            for name in ADAPTERS[1:]:
                self.model.load_adapter(root / name, adapter_name=name)
        self.stop = stop_token_ids(self.tokenizer)

    @torch.no_grad()
    def run(self, jobs: list[tuple[str, int]], max_tokens: int) -> tuple[list[dict], float]:
        from lorakit.data.tokenize import render_ids

        results, start = [], time.perf_counter()
        for adapter, i in jobs:
            t0 = time.perf_counter()
            self.model.set_adapter(adapter)
            ids = torch.tensor([render_ids(self.tokenizer, messages(i), add_generation_prompt=True)])
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=False, eos_token_id=self.stop, pad_token_id=self.tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:]
            t1 = time.perf_counter()
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            # generate returns at the end: its first token comes after the whole request (no streaming)
            results.append({"ttft": t1 - t0, "latency": t1 - t0, "tokens": int(new.numel()), "text": text})
        return results, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="base model (what lorakit serve --model takes)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--requests", type=int, default=2, help="requests per client in the 8-client scenario")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 round, 32 tokens, 1 request per client")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--cpu-weights", choices=["packed", "plain"], default="packed",
                        help="lorakit serve --cpu-weights (packed: the server's default)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.max_tokens, args.requests = 1, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_adapters(root, args.model)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = start_server(root, args.model, port, args.threads, args.cpu_weights)
        url = f"http://127.0.0.1:{port}"
        try:
            peft_model = None if args.no_peft else PeftBaseline(root, args.model)
            one = [[(a, i) for i, a in enumerate(ADAPTERS)]]
            scenarios = {
                "one-at-a-time": lambda: asyncio.run(_clients(url, one, args.max_tokens)),
                "8 clients": lambda: asyncio.run(_clients(
                    url, [[(a, i + 8 * k) for k in range(args.requests)] for i, a in enumerate(ADAPTERS)],
                    args.max_tokens)),
                "32 clients": lambda: asyncio.run(_clients(
                    url, [[(ADAPTERS[i % 8], i)] for i in range(32)], args.max_tokens)),
            }
            if peft_model is not None:
                scenarios["peft"] = lambda: peft_model.run(one[0], args.max_tokens)
            asyncio.run(_clients(url, [[(ADAPTERS[0], 0)]], 4))  # warm-up
            rounds: dict[str, list[dict]] = {name: [] for name in scenarios}
            names = list(scenarios)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    summary = summarize(*scenarios[name]())
                    rounds[name].append(summary)
                    print(f"round {r + 1} {name}: {summary['tokens']} tokens in {summary['wall']:.1f} s = "
                          f"{summary['tok/s']:.1f} tok/s", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    report(rounds, args)
    return 0


def report(rounds: dict[str, list[dict]], args) -> None:
    med = {name: {k: statistics.median(s[k] for s in runs) for k in ("tok/s", "ttft p50", "ttft p95",
                                                                     "latency p50", "latency p95")}
           for name, runs in rounds.items()}
    base = rounds["one-at-a-time"]
    print(f"\n{args.model} fp32, 8 adapters r=16 all-linear, greedy, up to {args.max_tokens} new tokens, "
          f"{args.threads} threads, --cpu-weights {args.cpu_weights}, {args.rounds} round(s)\n")
    print("| scenario | tok/s | vs one-at-a-time | TTFT p50 | TTFT p95 | latency p50 | latency p95 |")
    print("|---|---|---|---|---|---|---|")
    for name, m in med.items():
        ratio = paired_ratio([s["tok/s"] for s in rounds[name]], [s["tok/s"] for s in base])
        print(f"| {name} | {m['tok/s']:.1f} | {ratio:.2f}× | {m['ttft p50']:.2f} s | {m['ttft p95']:.2f} s | "
              f"{m['latency p50']:.2f} s | {m['latency p95']:.2f} s |")
    if "peft" in rounds:
        same = sum(a == b for a, b in zip(base[0]["texts"], rounds["peft"][0]["texts"]))
        print(f"\ngreedy replies identical, lorakit one-at-a-time vs peft generate: {same} of {len(base[0]['texts'])}")
    ratio8 = paired_ratio([s["tok/s"] for s in rounds["8 clients"]], [s["tok/s"] for s in base])
    print(f"goal: 8 clients ≥ 3.00× one-at-a-time tokens/s: {ratio8:.2f}× {'PASS' if ratio8 >= 3 else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
