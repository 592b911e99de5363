"""The trainer under torchrun: 2 CPU ranks on gloo, spawned by the tests, against one process.

The spawned runs are few and tiny (the 1-layer Llama of conftest, 8 chat rows, 4 steps); each has a
timeout and is killed as a process group if it overruns, so nothing hangs.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.data import IGNORE, Example, grouped_batches, packed_batches
from lorakit.train import distributed
from lorakit.train.config import RunConfig
from lorakit.train.loop import train
from lorakit.yamlconfig import load_config

TIMEOUT = 240


def _run(cmd, tmp_path, env=None, timeout=TIMEOUT):
    """Run `cmd` in its own process group; on timeout kill the whole group (torchrun and its workers)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(map(str, cmd))} still running after {timeout}s:\n{out[-3000:]}")
    return proc.returncode, out


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *map(str, args)]


def _adapter(out_dir):
    return load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))


def _losses(out_dir):
    rows = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def settings(tiny_lm_dir, sft_files):
    """The run every spawned test trains: 4 steps of one micro-batch per rank; eval only at the end."""
    return {
        "model": {"name": str(tiny_lm_dir)},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": sft_files[0], "eval": sft_files[1], "max_length": 64, "max_tokens": 128},
        "train": {"steps": 4, "lr": 1e-2, "schedule": "cosine", "warmup_steps": 1},
        "eval": {"generate": False},
    }


def _config_file(settings, directory, *overrides):
    config = load_config(RunConfig, None, [f"output_dir={directory / 'out'}", *overrides],
                         base=json.loads(json.dumps(settings)))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return config, path


_SCRIPT = textwrap.dedent("""
    # Run by torchrun --max-restarts 1 on 2 ranks: `lorakit train` for each config in turn, in one process per
    # rank (lorakit makes the process group on the first run and keeps it). On the first attempt both ranks
    # are killed right after checkpoint 2 of the first run; torchrun restarts them and the run resumes. The
    # last run fails: rank 1 raises at its second batch, while rank 0 waits for it in step 2's collectives.
    import os, sys
    from lorakit.cli import main
    from lorakit.train import prepare

    *runs, failing = sys.argv[1:]
    first_attempt = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
    for i, path in enumerate(runs):
        if i == 0 and first_attempt:
            os.environ["LORAKIT_FAULT_AFTER_STEP"] = "2"
        assert main(["train", path]) == 0
        os.environ.pop("LORAKIT_FAULT_AFTER_STEP", None)
    loss_sum, calls = prepare.LOSSES["sft"], []

    def breaking(model, batch):
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 2:
            raise RuntimeError("rank 1 broke at its second batch")
        return loss_sum(model, batch)

    prepare.LOSSES["sft"] = breaking
    main(["train", failing])
""")

FSDP_DROPOUT = ("train.distributed=fsdp", "lora.lora_dropout=0.1", "train.save_every=2")
RUNS = {  # in launch order
    "restarted": FSDP_DROPOUT,
    "uninterrupted": FSDP_DROPOUT,
    "ddp": (),
    "fsdp": ("train.distributed=fsdp",),
    "qlora": ("model.quantization=nf4",),
}


@pytest.fixture(scope="module")
def launched(settings, tmp_path_factory):
    """One torchrun launch (see _SCRIPT); returns (exit code, output, {run: output dir}, seconds)."""
    d = tmp_path_factory.mktemp("torchrun")
    configs = {name: _config_file(settings, d / name, *overrides) for name, overrides in RUNS.items()}
    _, failing = _config_file(settings, d / "failing")
    script = d / "runs.py"
    script.write_text(_SCRIPT)
    started = time.monotonic()
    code, out = _run(_torchrun("--max-restarts=1", script, *(path for _, path in configs.values()), failing), d)
    return code, out, {name: config.out for name, (config, _) in configs.items()}, time.monotonic() - started


def _one_rank(settings, tmp_path, *overrides):
    """The same run on one process with 2 micro-batches per step: the rows 2 ranks take in a step."""
    config, _ = _config_file(settings, tmp_path, "train.grad_accum=2", *overrides)
    train(config, quiet=True)
    return config.out


def _assert_same_run(a, b):
    assert _losses(a) == pytest.approx(_losses(b), rel=1e-5)
    torch.testing.assert_close(_adapter(a), _adapter(b), rtol=1e-5, atol=1e-5)


def test_two_ranks_equal_one_rank_with_twice_the_batch(launched, settings, tmp_path):
    """A step's global batch is the same rows either way (2 ranks × 1 micro-batch, 1 rank × 2), and the loss is
    normalised by its target tokens across ranks: same losses and adapter, to 1e-5."""
    _, out, runs, _ = launched
    assert "torchrun: 2 processes (cpu), ddp" in out
    reference = _one_rank(settings, tmp_path)
    _assert_same_run(runs["ddp"], reference)
    state = json.loads((runs["ddp"] / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert state["batches"] == json.loads((reference / "checkpoints" / "step-000004" /
                                           "trainer_state.json").read_text())["batches"]
    assert sorted(p.name for p in runs["ddp"].iterdir()) == \
        ["adapter", "checkpoints", "config.yaml", "loss_curve.png", "metrics.jsonl", "tensorboard"]


def test_fsdp_agrees_with_ddp(launched):
    _, out, runs, _ = launched
    assert out.count("torchrun: 2 processes (cpu), fsdp") == 4  # restarted (twice), uninterrupted, fsdp
    _assert_same_run(runs["fsdp"], runs["ddp"])


def test_qlora_under_ddp_equals_one_rank(launched, settings, tmp_path):
    _, _, runs, _ = launched
    _assert_same_run(runs["qlora"], _one_rank(settings, tmp_path, "model.quantization=nf4"))
    assert (runs["qlora"] / "adapter" / "base_quantization.json").is_file()


def test_killed_after_a_checkpoint_and_restarted_matches_the_uninterrupted_run(launched):
    """FSDP2 with dropout: both ranks killed right after checkpoint 2, restarted by torchrun, resumed from it
    (weights, AdamW moments, schedule, data position, each rank's RNG): the run ends where the one never
    stopped ended."""
    _, out, runs, _ = launched
    assert "exitcode: -9" in out
    rows = [json.loads(l) for l in (runs["restarted"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] != "data"] == [1, 2, 3, 4, 4]  # train rows, then the final eval
    _assert_same_run(runs["restarted"], runs["uninterrupted"])


def test_a_rank_that_raises_fails_the_job_with_its_message(launched):
    """Rank 0 waits for rank 1 inside step 2's collectives when rank 1 raises: torchrun stops it and the job
    exits non-zero with rank 1's message, long before the process-group timeout (30 min)."""
    code, out, runs, seconds = launched
    assert code != 0
    assert "RuntimeError: rank 1 broke at its second batch" in out
    assert "ChildFailedError" in out and seconds < TIMEOUT
    assert all((out_dir / "adapter").is_dir() for out_dir in runs.values())  # the runs before it all finished


def test_nproc_runs_torchrun_on_the_same_command(sft_config, tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(sft_config().model_dump(mode="json")))
    ran = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: ran.append(argv))
    main(["train", str(path), "lora.r=2", "--resume", "--nproc", "3", "--max-restarts", "2"])
    (argv,) = ran
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                    "--max-restarts=2", "-m", "lorakit", "train", str(path), "lora.r=2", "--resume"]


# ---------------------------------------------------------------------------------------------- in-process

def _examples(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 40, (1,), generator=g))
        ids = torch.randint(1, 100, (length,), generator=g).tolist()
        out.append(Example(ids, [IGNORE] * 2 + ids[2:]))
    return out


@pytest.mark.parametrize("kind", ["grouped", "packed"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_each_epoch_and_keep_the_padding_of_one_process(kind, world):
    """Over one epoch's steps the ranks see every example once; their batches are the one-process plan's
    batches (so the padding is the same), and every rank's loader ends at the same position."""
    examples = _examples()
    make = {"grouped": lambda: grouped_batches(examples, 120, 0, seed=4),
            "packed": lambda: packed_batches(examples, 64, 128, 0, seed=4)}[kind]
    single = list(make())
    per_rank = 2
    steps = len(single) // (per_rank * world)
    seen, padded, loaders = [], 0, []
    for rank in range(world):
        loader = make()
        stream = distributed.step_batches(loader, distributed.Context(rank=rank, world=world), per_rank)
        for _ in range(steps):
            for batch in next(stream):
                real = batch["labels"] != IGNORE
                seen += [tuple(row[keep].tolist()) for row, keep in zip(batch["labels"], real)] if kind == "grouped" \
                    else [int(real.sum())]
                padded += batch["input_ids"].numel()
        loaders.append(loader.state_dict())
    used = single[:steps * per_rank * world]
    assert padded == sum(b["input_ids"].numel() for b in used)
    if kind == "grouped":
        expected = [tuple(row[keep].tolist()) for b in used for row, keep in zip(b["labels"], b["labels"] != IGNORE)]
        assert sorted(seen) == sorted(expected) and len(set(seen)) == len(seen)
    else:
        assert sum(seen) == sum(int((b["labels"] != IGNORE).sum()) for b in used)
    assert all(state == loaders[0] for state in loaders)


def test_per_rank_rng_states_round_trip(tmp_path):
    from safetensors.torch import save_file

    save_file(distributed.rng_tensors(distributed.Context()), str(tmp_path / distributed.RNG_FILE))
    expected = torch.rand(5)
    torch.rand(100)
    distributed.restore_rng(tmp_path, distributed.Context())
    torch.testing.assert_close(torch.rand(5), expected, rtol=0, atol=0)


def test_fsdp_rejects_a_quantized_base(settings):
    with pytest.raises(ValueError, match="a quantized base lives in buffers, which FSDP does not shard"):
        load_config(RunConfig, None, ["train.distributed=fsdp", "model.quantization=nf4"],
                    base=json.loads(json.dumps(settings)))


def test_fsdp_rejects_hooks_that_need_whole_gradients(sft_config):
    from lorakit.tuners.base import NO_HOOKS
    from lorakit.tuners.adalora import AdaLoraHooks

    ctx = distributed.Context(world=2, launched=True)
    adalora = AdaLoraHooks.__new__(AdaLoraHooks)  # (its methods are what is checked)
    with pytest.raises(distributed.DistributedSetupError, match="training hooks of this run .method lora's, EWC"):
        distributed.choose_strategy(sft_config("train.distributed=fsdp"), None, ctx, adalora)
    assert distributed.choose_strategy(sft_config("train.distributed=fsdp"), None, ctx, NO_HOOKS) == "fsdp"
    assert distributed.choose_strategy(sft_config(), None, ctx, adalora) == "ddp"
    assert distributed.choose_strategy(sft_config(), None, ctx, NO_HOOKS) == "ddp"
    assert distributed.choose_strategy(sft_config("method=full"), None, ctx, NO_HOOKS) == "fsdp"
    assert distributed.choose_strategy(sft_config("method=full"), None, distributed.Context(), NO_HOOKS) is None


def test_torchrun_variables_without_torchrun_fail_before_loading(sft_config, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(distributed.DistributedSetupError, match="MASTER_ADDR, MASTER_PORT not: start distributed runs"):
        train(sft_config(), quiet=True)


def test_resuming_on_another_world_size_is_refused(sft_config):
    config = sft_config("train.steps=1")
    train(config, quiet=True)
    state = config.out / "checkpoints" / "step-000001" / "trainer_state.json"
    state.write_text(json.dumps(dict(json.loads(state.read_text()), world_size=2)))
    with pytest.raises(distributed.DistributedSetupError, match="written by a run of 2 process.*--nproc 2"):
        train(config, resume=True, quiet=True)


@pytest.mark.parametrize("args, env, message", [
    (["--nproc", "0"], {}, "--nproc: expected a positive integer, got '0'"),
    (["--nproc", "2", "--max-restarts", "-1"], {}, "--max-restarts: expected a whole number"),
    (["--max-restarts", "1"], {}, "--max-restarts goes with --nproc"),
    (["--nproc", "2"], {"RANK": "0", "WORLD_SIZE": "1"}, "--nproc inside a torchrun launch"),
])
def test_launch_options_are_checked(sft_config, tmp_path, capsys, monkeypatch, args, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(sft_config().model_dump(mode="json")))
    try:
        code = main(["train", str(path), *args])
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
