"""Export and compression, side by side: what each output costs on disk, how fast it decodes on the
CPU and how much of the fine-tune it keeps, starting from the quickstart adapter merged into SmolLM2.

    python benchmarks/compression.py                       # ≈ 20-30 min on 2 cores (trains what it needs)
    python benchmarks/compression.py --adapter runs/quickstart/adapter --rows fp32 int8-fbgemm int8-dequant

Rows (each a model directory or file under --out, loaded the way a user would):
    fp32            the merged model (`lorakit merge`)
    gguf-q8_0       `lorakit export gguf --type q8_0`, read back by transformers (which dequantizes it)
    gguf-q8_0-llama.cpp   the same file run by llama.cpp (llama-cpp-python; skipped if not installed)
    onnx            `lorakit export onnx`, run by onnxruntime (own greedy loop with the key/value cache)
    int8-fbgemm     `lorakit compress int8 --kernel fbgemm` (torch.ao's dynamic int8 kernel)
    int8-dequant    the same directory with lorakit's weight-only int8 kernel
    sparse-50       `lorakit compress prune --method unstructured --sparsity 0.5` (no recovery)
    structured      `compress prune --method structured --sparsity 0.5 --heads 0.34` + LoRA recovery
    student         distilled student: half the layers, initialised from the teacher's (`task: distill`)

Measures: size on disk; greedy decoding tokens/s of one chat prompt (32 new tokens, prefill
included, 2 threads), rows timed round-robin and reported as medians and as the median of per-round
ratios to fp32 (a noisy shared machine drifts between rounds, not within one); exact match of
greedy answers on the 60 held-out notes of bundled:quickstart_eval. The parity figures of the
exports (GGUF f32 / q8_0, GGUF LoRA, ONNX) are printed too, and everything goes to compression.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("fp32", "gguf-q8_0", "gguf-q8_0-llama.cpp", "onnx", "int8-fbgemm", "int8-dequant", "sparse-50", "structured",
        "student")
EVAL = "bundled:quickstart_eval"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def quickstart_adapter(out: Path) -> Path:
    """runs/quickstart/adapter if it exists, else the quickstart config trained into `out`."""
    existing = ROOT / "runs" / "quickstart" / "adapter"
    if (existing / "adapter_config.json").is_file():
        return existing
    from lorakit.train.config import RunConfig
    from lorakit.train.loop import train
    from lorakit.yamlconfig import load_config

    log("training the quickstart adapter (configs/quickstart.yaml)")
    config = load_config(RunConfig, str(ROOT / "configs" / "quickstart.yaml"),
                         [f"output_dir={out / 'quickstart'}", "eval.generate=false"])
    return Path(train(config, quiet=True).adapter_dir)


class TorchRow:
    def __init__(self, model, tokenizer, path: Path):
        self.model, self.tokenizer, self.path = model.eval(), tokenizer, path

    def decode(self, new_tokens: int) -> float:
        from lorakit.compress.measure import decode_tokens_per_second

        return decode_tokens_per_second(self.model, self.tokenizer, new_tokens, repeats=1)

    def exact_match(self, max_samples: int) -> float:
        from lorakit.compress.measure import quality

        return quality(self.model, self.tokenizer, EVAL, max_samples=max_samples, max_new_tokens=24)["exact_match"]


class OnnxRow:
    def __init__(self, path: Path, threads: int):
        from lorakit.export import OnnxModel

        self.onnx, self.path = OnnxModel(path, threads=threads), path
        self.tokenizer = self.onnx.tokenizer()
        from lorakit.data.tokenize import end_of_turn_id

        self.stop = [t for t in {self.tokenizer.eos_token_id, end_of_turn_id(self.tokenizer)} if t is not None]

    def decode(self, new_tokens: int) -> float:
        from lorakit.compress.measure import DECODE_PROMPT
        from lorakit.data.tokenize import render_ids

        ids = render_ids(self.tokenizer, [{"role": "user", "content": DECODE_PROMPT}], add_generation_prompt=True)
        start = time.perf_counter()
        self.onnx.generate([ids], new_tokens, stop_ids=[], pad_id=self.tokenizer.pad_token_id)
        return new_tokens / (time.perf_counter() - start)

    def exact_match(self, max_samples: int) -> float:
        from lorakit.data.formats import load_dataset
        from lorakit.data.tokenize import encode_prompt
        from lorakit.train.evaluate import normalize_answer
        from lorakit.data.io import data_path

        rows = load_dataset(data_path(EVAL, "eval")).rows[:max_samples]
        encoded = [encode_prompt(self.tokenizer, conv) for conv in rows]
        right = 0
        for start in range(0, len(encoded), 16):
            chunk = encoded[start:start + 16]
            answers = self.onnx.generate([p for p, _ in chunk], 24, self.stop, self.tokenizer.pad_token_id)
            right += sum(normalize_answer(self.tokenizer.decode(a, skip_special_tokens=True)) == normalize_answer(ref)
                         for a, (_, ref) in zip(answers, chunk))
        return right / len(encoded)


class LlamaCppRow:
    """The GGUF file under llama.cpp, prompts tokenized by the model's own tokenizer (same ids, tested)."""

    def __init__(self, path: Path, tokenizer, threads: int):
        import llama_cpp

        from lorakit.data.tokenize import end_of_turn_id

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)
        self.path, self.tokenizer = path, tokenizer
        self.stop = {t for t in {tokenizer.eos_token_id, end_of_turn_id(tokenizer)} if t is not None}

    def _greedy(self, ids: list[int], new_tokens: int, stop: set) -> list[int]:
        out = []
        for token in self.llm.generate(ids, top_k=1, temp=0.0, reset=True):
            if token in stop or len(out) == new_tokens:
                break
            out.append(token)
        return out

    def decode(self, new_tokens: int) -> float:
        from lorakit.compress.measure import DECODE_PROMPT
        from lorakit.data.tokenize import render_ids

        ids = render_ids(self.tokenizer, [{"role": "user", "content": DECODE_PROMPT}], add_generation_prompt=True)
        start = time.perf_counter()
        self._greedy(ids, new_tokens, set())
        return new_tokens / (time.perf_counter() - start)

    def exact_match(self, max_samples: int) -> float:
        from lorakit.data.formats import load_dataset
        from lorakit.data.tokenize import encode_prompt
        from lorakit.train.evaluate import normalize_answer
        from lorakit.data.io import data_path

        rows = load_dataset(data_path(EVAL, "eval")).rows[:max_samples]
        right = 0
        for conv in rows:
            prompt, reference = encode_prompt(self.tokenizer, conv)
            answer = self.tokenizer.decode(self._greedy(prompt, 24, self.stop), skip_special_tokens=True)
            right += normalize_answer(answer) == normalize_answer(reference)
        return right / len(rows)


def build(name: str, args, fp32_dir: Path, adapter: Path, figures: dict):
    """Make (if needed) and load the row `name`."""
    from lorakit.compress import compress_int8, prune_to_dir
    from lorakit.export import export_gguf, export_onnx
    from lorakit.inference import load_trained
    from lorakit.quant.saved import use_int8_kernel

    out = args.out
    if name == "gguf-q8_0":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = out / "model-q8_0.gguf"
        figures["gguf_q8_0"] = export_gguf(str(fp32_dir), path, "q8_0", overwrite=True)
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=path.name)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return TorchRow(model, tokenizer, path)
    if name == "gguf-q8_0-llama.cpp":
        path = out / "model-q8_0.gguf"
        if not path.is_file():
            figures["gguf_q8_0"] = export_gguf(str(fp32_dir), path, "q8_0", overwrite=True)
        return LlamaCppRow(path, load_trained(str(fp32_dir)).tokenizer, args.threads)
    if name == "onnx":
        figures["onnx"] = export_onnx(str(fp32_dir), out / "onnx", overwrite=True)
        return OnnxRow(out / "onnx", args.threads)
    if name.startswith("int8"):
        if not (out / "int8" / "config.json").is_file():
            figures["int8"] = compress_int8(str(fp32_dir), out / "int8", kernel="auto", overwrite=True)
        trained = load_trained(str(out / "int8"))
        use_int8_kernel(trained.model, name.split("-")[1])
        return TorchRow(trained.model, trained.tokenizer, out / "int8")
    if name == "sparse-50":
        figures["sparse-50"] = prune_to_dir(str(fp32_dir), out / "sparse-50", "unstructured", 0.5, overwrite=True)
    elif name == "structured":
        figures["structured"] = prune_to_dir(
            str(fp32_dir), out / "structured", "structured", sparsity=0.5, heads=0.34,
            calibration="bundled:quickstart_train", recover=str(ROOT / "configs" / "quickstart.yaml"),
            recover_overrides=["eval.generate=false"], eval_data=EVAL, max_samples=args.max_samples,
            overwrite=True)
    elif name == "student":
        figures["student"] = distill_student(args, adapter)
    trained = load_trained(str(out / name))
    return TorchRow(trained.model, trained.tokenizer, out / name)


def distill_student(args, adapter: Path) -> dict:
    """Half the teacher's layers, initialised from it, trained by logit distillation (configs/distill.yaml)."""
    from lorakit.compress import prune_to_dir
    from lorakit.inference import load_merged
    from lorakit.io.model_dir import save_model_dir
    from lorakit.train.config import RunConfig
    from lorakit.train.loop import train
    from lorakit.yamlconfig import load_config

    init = args.out / "student-init"
    prune_to_dir(str(args.out / "fp32"), init, "structured", sparsity=0.0, keep_layers=args.student_layers,
                 overwrite=True)
    config = load_config(RunConfig, str(ROOT / "configs" / "distill.yaml"),
                         [f"model.name={init}", f"distill.teacher={args.out / 'fp32'}",
                          f"output_dir={args.out / 'student-run'}", "eval.generate=false"])
    result = train(config, quiet=True)
    merged = load_merged(str(result.adapter_dir))
    save_model_dir(merged.model, args.out / "student", merged.tokenizer)
    return {"layers": args.student_layers, "steps": result.steps, "seconds": result.seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-compression")
    parser.add_argument("--adapter", type=Path, help="the adapter to start from (default: the quickstart's)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed decoding rounds (round-robin over rows)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--max-samples", type=int, default=60, help="held-out notes for exact match")
    parser.add_argument("--student-layers", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    from lorakit.compress.measure import dir_bytes
    from lorakit.export import export_gguf, export_gguf_lora
    from lorakit.inference import load_merged
    from lorakit.io.model_dir import save_model_dir

    adapter = args.adapter or quickstart_adapter(args.out)
    log(f"adapter: {adapter}")
    figures: dict = {"gguf_lora": export_gguf_lora(adapter, args.out / "adapter-lora.gguf", overwrite=True)}
    fp32_dir = args.out / "fp32"
    merged = load_merged(str(adapter))
    save_model_dir(merged.model, fp32_dir, merged.tokenizer)
    figures["gguf_f32"] = export_gguf(str(fp32_dir), args.out / "model-f32.gguf", "f32", overwrite=True)
    log(f"parity: gguf f32 {figures['gguf_f32']}, gguf-lora {figures['gguf_lora']}")

    rows = {}
    if importlib.util.find_spec("llama_cpp") is None and "gguf-q8_0-llama.cpp" in args.rows:
        log("llama-cpp-python is not installed: no llama.cpp row")
        args.rows.remove("gguf-q8_0-llama.cpp")
    for name in args.rows:
        log(f"building {name}")
        rows[name] = TorchRow(merged.model, merged.tokenizer, fp32_dir) if name == "fp32" else \
            build(name, args, fp32_dir, adapter, figures)
    results = {name: {"bytes": dir_bytes(row.path)} for name, row in rows.items()}
    for name, row in rows.items():
        log(f"exact match: {name}")
        results[name]["exact_match"] = row.exact_match(args.max_samples)

    log(f"decoding speed, {args.rounds} rounds of {args.new_tokens} tokens")
    for row in rows.values():
        row.decode(4)  # warm-up
    samples = {name: [] for name in rows}
    for r in range(args.rounds):
        order = list(rows)[r % len(rows):] + list(rows)[:r % len(rows)]
        for name in order:
            samples[name].append(rows[name].decode(args.new_tokens))
    for name in rows:
        results[name]["tokens_per_s"] = statistics.median(samples[name])
        if "fp32" in samples:
            results[name]["speed_vs_fp32"] = statistics.median(a / b for a, b in zip(samples[name], samples["fp32"]))

    print("\n| row | size on disk | tokens/s (2 threads) | vs fp32 (paired) | exact match |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['bytes'] / 2**20:.0f} MiB | {r['tokens_per_s']:.1f} | "
              f"{r.get('speed_vs_fp32', float('nan')):.2f}× | {100 * r['exact_match']:.1f}% |")
    print("\nfigures:", json.dumps(figures, indent=2, default=str))
    (args.out / "compression.json").write_text(json.dumps({"rows": results, "figures": figures,
                                                           "args": vars(args)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
