"""`lorakit data check | convert | split | dedupe | augment | self-instruct`: data files before training."""
from __future__ import annotations

import argparse

from ..data.augment import AugmentMethod
from ..data.convert import ChatFormat
from ..data.formats import FORMATS
from .common import RAW, bounded_float, positive_int, temperature

AUTO = "auto"


_up_to_one = bounded_float(lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")
_below_one = bounded_float(lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


def _seed(text: str) -> int:
    if not text.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(text)


def _path(value: str, key: str):
    from ..data.io import data_path

    return data_path(value, key)


def _format(args) -> str | None:
    return None if args.format == AUTO else args.format


def cmd_check(args) -> int:
    from ..data.check import check_file, dumps
    from ..train.config import DataSection

    max_length = args.max_length or DataSection.model_fields["max_length"].default
    report = check_file(_path(args.file, "FILE"), _format(args), max_length=max_length, model=args.model,
                        tokenizer=not args.no_tokenizer, near=None if args.exact_only else args.near,
                        plot=args.plot, source=args.file, against=[(_path(a, "--against"), a) for a in args.against])
    print(dumps(report) if args.json else report.table())
    failed = report.errors or (args.strict and report.warnings)
    return 1 if failed else 0


def cmd_convert(args) -> int:
    from ..data.convert import convert_file

    result = convert_file(_path(args.source, "IN"), args.output, ChatFormat(args.to), _format(args), args.overwrite)
    print(f"{result.rows} rows converted from {result.source_format} to {result.to.value}: {args.output}")
    return 0


def cmd_split(args) -> int:
    from ..data.convert import split_file

    result = split_file(_path(args.file, "FILE"), args.eval, args.seed, args.out_dir, args.train_out, args.eval_out,
                        _format(args), args.overwrite)
    per_label = " (per label)" if result.stratified else ""
    print(f"train {result.train} rows: {result.train_path}\neval {result.eval} rows: {result.eval_path}{per_label}")
    return 0


def cmd_dedupe(args) -> int:
    from ..data.dedupe import dedupe_file

    result = dedupe_file(_path(args.source, "IN"), args.output, args.near, _format(args), args.overwrite)
    print(f"{result.summary()}: {args.output}")
    return 0


def cmd_augment(args) -> int:
    from ..data.augment import augment_file

    result = augment_file(_path(args.source, "IN"), args.output, AugmentMethod(args.method), args.n_per_row, args.seed,
                          _format(args), keep_original=not args.variants_only, model=args.model,
                          overwrite=args.overwrite, temperature=args.temperature)
    print(f"{result.summary()}: {args.output}")
    return 0


def cmd_self_instruct(args) -> int:
    from ..data.self_instruct import self_instruct_file

    result = self_instruct_file(_path(args.seed_tasks, "--seed-tasks"), args.n, args.output, model=args.model,
                                seed=args.seed, k=args.k, threshold=args.threshold, temperature=args.temperature,
                                max_attempts=args.max_attempts, overwrite=args.overwrite)
    print(f"{result.summary()}: {args.output}")
    return 0


def register(sub, parent) -> None:
    p = sub.add_parser("data", parents=[parent], help="check, convert, split, dedupe, augment, self-instruct data files",
                       formatter_class=RAW, description="Tools for data files (json, jsonl, csv, parquet or "
                                                        "bundled:NAME in; .jsonl or .json out, written atomically).",
                       epilog="examples:\n  lorakit data check train.jsonl --plot lengths.png\n"
                              "  lorakit data convert train.jsonl train_alpaca.jsonl --to alpaca\n"
                              "  lorakit data split all.jsonl --eval 0.1 --seed 0\n"
                              "  lorakit data dedupe train.jsonl clean.jsonl --near 0.85\n"
                              "  lorakit data augment train.jsonl more.jsonl --method rules --n-per-row 2\n"
                              "  lorakit data self-instruct --seed-tasks seeds.jsonl --n 20 new.jsonl")
    tools = p.add_subparsers(dest="tool", required=True, metavar="TOOL")

    def fmt(g):
        g.add_argument("--format", choices=[AUTO, *FORMATS], default=AUTO, help="row format (default: detected)")

    def overwrite(g):
        g.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    g = tools.add_parser("check", parents=[parent], help="validate every row; duplicates, lengths, labels",
                         description="Exit 0: no errors; 1: errors found (with --strict: or warnings); 2: bad "
                                     "usage or unreadable file.")
    g.add_argument("file", help="data file or bundled:NAME")
    fmt(g)
    g.add_argument("--max-length", type=positive_int, help="tokens per example (default: the trainer's, 512)")
    tok = g.add_mutually_exclusive_group()
    tok.add_argument("--model", help="whose tokenizer counts lengths (default: smollm2-135m-instruct; "
                                     "all-minilm-l6-v2 for classification rows)")
    tok.add_argument("--no-tokenizer", action="store_true", help="count whitespace words instead (no model load)")
    g.add_argument("--near", type=_up_to_one, default=0.85,
                   help="near-duplicate threshold: Jaccard of character 5-grams (default 0.85)")
    g.add_argument("--exact-only", action="store_true", help="look for exact duplicates only")
    g.add_argument("--against", action="append", default=[], metavar="OTHER",
                   help="warn about rows that repeat a row of OTHER (e.g. an eval set vs its training set); repeatable")
    g.add_argument("--json", action="store_true", help="machine-readable report")
    g.add_argument("--plot", metavar="OUT.png", help="write a histogram of row lengths")
    g.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    g.set_defaults(func=cmd_check)

    g = tools.add_parser("convert", parents=[parent], help="rewrite chat rows as alpaca, sharegpt or messages")
    g.add_argument("source", metavar="IN")
    g.add_argument("output", metavar="OUT", help=".jsonl or .json")
    g.add_argument("--to", required=True, choices=[f.value for f in ChatFormat])
    fmt(g)
    overwrite(g)
    g.set_defaults(func=cmd_convert)

    g = tools.add_parser("split", parents=[parent], help="seeded train/eval split (per label for classification)")
    g.add_argument("file", help="data file or bundled:NAME")
    g.add_argument("--eval", type=_below_one, default=0.1, help="eval share (default 0.1)")
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--out-dir", help="folder of STEM_train.jsonl / STEM_eval.jsonl (default: FILE's folder; "
                                     "the current one for bundled:NAME)")
    g.add_argument("--train-out", help="train file name instead of STEM_train.jsonl")
    g.add_argument("--eval-out", help="eval file name instead of STEM_eval.jsonl")
    fmt(g)
    overwrite(g)
    g.set_defaults(func=cmd_split)

    g = tools.add_parser("dedupe", parents=[parent], help="drop exact (and with --near, near) duplicate rows")
    g.add_argument("source", metavar="IN")
    g.add_argument("output", metavar="OUT", help=".jsonl or .json")
    g.add_argument("--near", type=_up_to_one, metavar="THRESHOLD",
                   help="also drop rows whose character 5-gram Jaccard with an earlier kept row is at least this")
    fmt(g)
    overwrite(g)
    g.set_defaults(func=cmd_dedupe)

    g = tools.add_parser("augment", parents=[parent], help="reworded copies of each row's request (answers unchanged)")
    g.add_argument("source", metavar="IN")
    g.add_argument("output", metavar="OUT", help=".jsonl or .json")
    g.add_argument("--method", choices=[m.value for m in AugmentMethod], default=AugmentMethod.RULES.value,
                   help="rules: synonyms, word order, framing (seeded); model: a local model rewords it")
    g.add_argument("--n-per-row", type=positive_int, default=2, help="variants per row (at most)")
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--model", help="--method model: the model (default: smollm2-135m-instruct)")
    g.add_argument("--temperature", type=temperature, default=0.7, help="--method model: sampling temperature")
    g.add_argument("--variants-only", action="store_true", help="write the variants without the original rows")
    fmt(g)
    overwrite(g)
    g.set_defaults(func=cmd_augment)

    g = tools.add_parser("self-instruct", parents=[parent], help="new instruction/output pairs from seed tasks",
                         description="The Self-Instruct loop: prompt with sampled seed tasks, parse, filter by "
                                     "format, length and ROUGE-L overlap, grow the pool. Alpaca rows out.")
    g.add_argument("output", metavar="OUT", help=".jsonl or .json")
    g.add_argument("--seed-tasks", required=True, help="chat data file (alpaca, sharegpt, messages) or bundled:NAME")
    g.add_argument("--n", type=positive_int, required=True, help="new tasks to write")
    g.add_argument("--model", help="the model that writes them (default: smollm2-135m-instruct)")
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--k", type=positive_int, default=3, help="example tasks per prompt")
    g.add_argument("--threshold", type=_up_to_one, default=0.7,
                   help="refuse a task whose ROUGE-L F1 with a pool instruction is at least this")
    g.add_argument("--temperature", type=temperature, default=0.7)
    g.add_argument("--max-attempts", type=positive_int, help="prompts to try at most (default 10 x --n)")
    overwrite(g)
    g.set_defaults(func=cmd_self_instruct)
