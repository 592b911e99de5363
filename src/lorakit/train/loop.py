"""The training loop, top to bottom: prepare → (resume) → steps with accumulation → eval/checkpoint → save.

Loss normalisation: an optimizer step takes `grad_accum` micro-batches, counts the target tokens
(classification: examples) over all of them first, and backpropagates Σloss / total for each, so
k micro-batches give exactly the gradient of one batch holding all their rows.

Device and precision (`precision.py`): one process trains on `train.device` (auto: the GPU when there is
one); a bfloat16 / float16 base trains fp32 master adapter weights, under autocast on CUDA, with a
gradient scaler for float16. A float32 run goes through none of it.

Under torchrun the same loop runs on every rank (`distributed.py`): each step takes `grad_accum` micro-batches
per rank, the target count is summed over ranks before any backward, gradients are averaged by DDP / FSDP
(so the loss is scaled by the world size), and rank 0 alone writes.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch
import yaml
from torch import nn
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import InputError
from ..files import atomic_write_text, check_output_dir
from ..io import save_adapter, write_stack_record, write_task_prefixes
from ..data.batching import collate_padded
from ..tuners.base import NO_HOOKS, HookChain, TrainingHooks
from . import checkpoint, compiled, continual, distributed
from .config import RunConfig, Task
from .evaluate import EvalResult, score
from .losses import causal_lm_loss_sum, count_targets
from .logs import MetricsLog, plot_loss
from .optim import build_optimizer
from .precision import Precision, warn_slow_cpu_half
from .prepare import LOSSES, Prepared, prepare
from .schedule import build_scheduler


AUX_NAME = "aux.safetensors"
"""In checkpoints: the state of `Prepared.aux` (what the loss trains besides the model)."""


class TrainingError(RuntimeError):
    """Training stopped on purpose (e.g. a non-finite loss); the message says why and what was kept."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    final_eval: Optional[EvalResult] = None
    first_eval: Optional[EvalResult] = None
    adapter_dir: Optional[Path] = None
    seconds: float = 0.0
    target_tokens: int = 0
    stopped_early: bool = False


def evaluate(run: Prepared, config: RunConfig, generate: bool = True,
             replica: Optional[distributed.Replica] = None, precision: Optional[Precision] = None) -> EvalResult:
    """Eval loss / perplexity, and exact match (chat data) or accuracy (classification), in the run's
    `precision` (autocast for a 16-bit base on CUDA).
    Under torchrun (`replica`), every rank evaluates the whole held-out set and gets the same figures."""
    if run.eval_batches is None:
        return EvalResult()
    model, loss_sum = replica.evaluation() if replica is not None else (run.model, run.loss_sum)
    conversations = run.eval_conversations if generate and config.eval.generate else None
    with precision.forward() if precision is not None else nullcontext(), compiled.eager():
        return score(model, lambda: _one_epoch(run.eval_batches), loss_sum, config.task is Task.CLASSIFICATION,
                     run.tokenizer, conversations, config.eval.max_new_tokens, config.eval.batch_size)


def train(config: RunConfig, resume: bool = False, run: Optional[Prepared] = None,
          eval_before: bool = False, quiet: bool = False) -> TrainResult:
    """Run one training job described by `config`; returns losses, evals and where things were saved.
    Under torchrun every rank calls this; see `distributed.py`.

    Nothing is written before the data, the model and (with `resume`) the checkpoint have been read
    and checked: a run that fails on bad input leaves `output_dir` as it was (or absent).
    """
    ctx = distributed.setup(config.train.distributed_timeout_s, config.train.device)  # before any file is read
    out = check_output_dir(config.out, "output_dir")
    found = _checkpoint_to_resume(config, ctx, resume)  # before the model loads: a wrong output_dir fails in a second
    run = run or prepare(config)
    if config.train.compile:
        compiled.check_compilable(run.model, ctx.device)
    with compiled.compiled_layers(run.model) if config.train.compile else nullcontext():
        # a rank that raises exits; torchrun stops the rest
        result = _train(config, ctx, out, found, run, eval_before, quiet)
    ctx.barrier()  # the adapter is on disk before any rank returns
    return result


def _train(config: RunConfig, ctx: distributed.Context, out: Path, found: Optional[Path], run: Prepared,
           eval_before: bool, quiet: bool) -> TrainResult:
    main = ctx.is_main
    resume = found is not None
    model, tc = run.model, config.train
    _place(run, ctx)  # before the hooks below take references to the adapter's tensors
    precision = Precision.of(config.model.dtype, ctx.device)
    if precision.scaler is not None:
        _check_scalable(model)  # before anything is written
    if found is not None:
        checkpoint.check(found, model)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    total = tc.steps or max(1, math.ceil(tc.epochs * len(run.train_batches) / (tc.grad_accum * ctx.world)))
    hooks = _hooks(model, config, total)  # the method's extras: loss terms, per-step work (e.g. AdaLoRA's ranks)
    hooks.start(model, out, lambda d: save_adapter(model, d, base_model_name_or_path=config.model.name) if main
                else None)  # before any update (and before sharding)
    if ctx.world > 1:
        torch.manual_seed(tc.seed + 1_000_003 * ctx.rank)  # same init on every rank (prepare), own dropout masks
    replica = distributed.Replica(model, run.loss_sum, ctx, distributed.choose_strategy(config, model, ctx, hooks))
    if main and ctx.launched and not quiet:
        tqdm.write(f"torchrun: {ctx.world} processes ({ctx.device.type}), {replica.strategy}")
    if precision.scaler is not None and replica.strategy == "fsdp":
        raise distributed.DistributedSetupError("model.dtype: float16: the loss scaler checks each rank's own "
                                                "gradients, FSDP holds shards of them; use bfloat16 or "
                                                "train.distributed: ddp")
    if tc.save_fisher_samples and replica.strategy == "fsdp":
        raise distributed.DistributedSetupError("train.save_fisher_samples: the Fisher is computed on whole "
                                                "parameters, not FSDP shards; use train.distributed: ddp")
    params = [p for p in model.parameters() if p.requires_grad]  # after sharding: FSDP's parameters
    if not params:
        raise TrainingError("nothing to train: no parameter requires grad")
    optimizer = build_optimizer(model, lr=tc.lr, weight_decay=tc.weight_decay, loraplus_lr_ratio=tc.loraplus_lr_ratio)
    aux = [p for p in run.aux.parameters() if p.requires_grad] if run.aux is not None else []
    if aux:  # trained with the model, checkpointed beside it, never shipped
        if replica.strategy == "fsdp":
            raise distributed.DistributedSetupError("distill.hidden_weight: the feature projections are kept whole, "
                                                    "not sharded; use train.distributed: ddp")
        optimizer.add_param_group({"params": aux, "lr": tc.lr, "weight_decay": 0.0})
        params += aux
    scheduler = build_scheduler(optimizer, total, tc.warmup_steps, tc.schedule)

    result = TrainResult(out, total)
    if eval_before:
        result.first_eval = evaluate(run, config, replica=replica, precision=precision)
    state = {"best_eval_loss": None, "bad_evals": 0, "batches": run.train_batches.state_dict()}
    start = 0
    if resume:
        with distributed.whole_state(replica, optimizer, load=True):
            state = checkpoint.restore(found, model, optimizer, scheduler)
        if ctx.launched or (ctx.device.type == "cuda" and (found / distributed.RNG_FILE).is_file()):
            distributed.restore_rng(found, ctx)
        precision.load_state_dict(state)
        run.train_batches.load_state_dict(state["batches"])
        start = state["step"]
        hooks.load(model, found)
        if run.aux is not None and (found / AUX_NAME).is_file():
            run.aux.load_state_dict(load_file(str(found / AUX_NAME)))
    if main:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    log = MetricsLog(out, resume=resume, until_step=start) if main else None
    if log is not None and not resume:
        _report_data(run, log, quiet)
    steps = distributed.step_batches(run.train_batches, ctx, tc.grad_accum)
    fault_step = int(os.environ.get("LORAKIT_FAULT_AFTER_STEP", "0"))  # tests: simulate a kill

    if main:  # after every input check: a bad config's error stays one line
        warn_slow_cpu_half(config.model.dtype, ctx.device)
    model.train()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=quiet or not main, dynamic_ncols=True)
    t0, tokens_seen = time.perf_counter(), 0
    for step in range(start + 1, total + 1):
        micro = next(steps)
        # the target count of the whole step, all ranks together; DDP / FSDP average gradients over ranks
        (n_targets,) = ctx.sum(sum(count_targets(b) for b in micro))
        loss_total, step_tokens = 0.0, 0
        for i, batch in enumerate(micro):
            with replica.accumulating(last=i == len(micro) - 1):
                with precision.forward():  # the model's forward (autocast for a 16-bit base on CUDA)
                    loss = replica.loss_sum(batch) * ctx.world / max(n_targets, 1)
                extra = hooks.regularizer(model)  # loss terms on the fp32 adapter weights, in fp32
                if extra is not None:
                    loss = loss + extra / len(micro)
                precision.backward(loss)
            loss_total += float(loss.detach()) / ctx.world
            step_tokens += _real_tokens(batch)
        loss_total, step_tokens = ctx.sum(loss_total, step_tokens)
        n_targets, tokens_seen = int(n_targets), tokens_seen + int(step_tokens)
        precision.unscale(optimizer)  # (float16: the loss scale off the gradients before they are measured)
        # max_norm=inf measures without clipping; a non-finite gradient would poison the weights (and checkpoints),
        # except under float16's loss scaling, where the scaler skips that step and lowers the scale
        grad_norm = replica.clip(params, tc.max_grad_norm or math.inf)
        if not (math.isfinite(loss_total) and (math.isfinite(grad_norm) or precision.skips_non_finite())):
            last = checkpoint.latest(out)
            kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
            raise TrainingError(f"step {step}: loss is {loss_total}, gradient norm {grad_norm}; "
                                f"training stopped before the update ({kept})")
        lr = optimizer.param_groups[0]["lr"]  # the lr of this step; scheduler.step() sets the next one
        stepped = precision.step(optimizer)
        scheduler.step()
        hooks.after_step(model, step)  # may read this step's grads, so before zero_grad
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(loss_total)
        result.target_tokens += n_targets

        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss_total:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_seen / elapsed:.0f}", refresh=False)
        bar.update(1)
        if main and (step % tc.log_every == 0 or step == total):
            log.write({"split": "train", "step": step, "loss": loss_total, "lr": lr, "targets": n_targets,
                       "tokens_per_s": tokens_seen / elapsed, "elapsed_s": round(elapsed, 3), **hooks.metrics(),
                       **precision.metrics(stepped)})

        last_step = step == total
        if run.eval_batches is not None and ((tc.eval_every and step % tc.eval_every == 0) or last_step):
            ev = evaluate(run, config, generate=last_step, replica=replica, precision=precision)
            if main:
                log.write({"split": "eval", "step": step, **ev.metrics()})
            result.final_eval = ev
            if ev.loss is not None and (state["best_eval_loss"] is None or ev.loss < state["best_eval_loss"]):
                state["best_eval_loss"], state["bad_evals"] = ev.loss, 0
            else:
                state["bad_evals"] += 1
            if tc.early_stopping_patience and state["bad_evals"] >= tc.early_stopping_patience and not last_step:
                if main:
                    bar.write(f"early stopping at step {step}: eval loss did not improve for {state['bad_evals']} evals")
                result.stopped_early = True
        if (tc.save_every and step % tc.save_every == 0) or last_step or result.stopped_early:
            _check_finite(model, step, out)
            state["batches"] = run.train_batches.state_dict()
            _save_checkpoint(run, config, ctx, replica, optimizer, scheduler, step,
                             dict(state, world_size=ctx.world, **precision.state_dict()), hooks)
        if fault_step and step == fault_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if result.stopped_early:
            result.steps = step
            break
    bar.close()
    result.seconds = time.perf_counter() - t0
    if result.stopped_early and result.final_eval is not None and run.eval_conversations:
        result.final_eval = evaluate(run, config, replica=replica, precision=precision)
    with distributed.whole_state(replica, optimizer):
        if main:
            result.adapter_dir = _write_artifacts(run, config, out, hooks)
    if main and tc.save_fisher_samples:
        with compiled.eager():
            _write_fisher(run, config, log, result.steps, quiet)
    if main:
        log.close()
        plot_loss(log.rows(), out / "loss_curve.png")
    return result


def _save_checkpoint(run: Prepared, config: RunConfig, ctx: distributed.Context, replica: distributed.Replica,
                     optimizer, scheduler, step: int, state: dict, hooks: TrainingHooks) -> None:
    """Rank 0 writes checkpoint `step` (FSDP: from shards gathered for it); every rank waits for it, so a
    rank killed right after finds the checkpoint complete."""
    rng = distributed.rng_tensors(ctx) if ctx.launched or ctx.device.type == "cuda" else None

    def extras(directory: Path) -> None:
        _write_artifacts(run, config, directory, hooks, checkpointing=True)
        if rng is not None:
            from safetensors.torch import save_file

            save_file(rng, str(directory / distributed.RNG_FILE))

    with distributed.whole_state(replica, optimizer):
        if ctx.is_main:
            checkpoint.save(config.out, step, run.model, optimizer, scheduler, state, extras, config.train.keep_last)
    ctx.barrier()


def _place(run: Prepared, ctx: distributed.Context) -> None:
    """The model, and a loss that is a module (distillation's projections), on this process's device
    (nothing to do on the CPU, where they were loaded). A distillation teacher follows on its first batch."""
    if ctx.device.type == "cpu":
        return
    run.model.to(ctx.device)
    if isinstance(run.loss_sum, nn.Module):
        run.loss_sum.to(ctx.device)


def _check_scalable(model: nn.Module) -> None:
    """float16 trains with a loss scaler, which needs fp32 gradients: every trainable weight must be an fp32
    master (adapters are; a 16-bit trained copy, e.g. method full or modules_to_save, is not)."""
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            raise InputError(f"model.dtype: float16: {name} trains in {str(p.dtype).removeprefix('torch.')}, "
                                "and float16's loss scaler needs fp32 trainable weights; use model.dtype bfloat16 "
                                "(no scaler) or float32")


def _checkpoint_to_resume(config: RunConfig, ctx: distributed.Context, resume: bool) -> Optional[Path]:
    """The newest checkpoint when resuming (`--resume`, or workers restarted by torchrun --max-restarts, which
    take it only if it holds this same config); None for a fresh start. Every rank takes rank 0's choice and
    must be able to read it (multi-node: output_dir on storage every node sees)."""
    found = checkpoint.latest(config.out) if resume or ctx.restarts else None
    if resume and found is None:
        raise TrainingError(f"--resume: no checkpoint under {checkpoint.checkpoint_root(config.out)}")
    if not resume and found is not None:
        saved = found / "config.yaml"
        if not (saved.is_file() and yaml.safe_load(saved.read_text()) == config.model_dump(mode="json")):
            found = None
    found = ctx.broadcast(found)
    if found is not None:
        checkpoint.check(found)
        if not (found / "trainer_state.json").is_file():
            raise TrainingError(f"rank {ctx.rank} cannot read {found}: output_dir must be on storage every node sees")
        distributed.check_resumable(found, ctx)
    return found


def _report_data(run: Prepared, log: MetricsLog, quiet: bool) -> None:
    """What encoding did to each split (rows, truncated, longest, dropped): one console line and a metrics row."""
    stats = {split: s for split, s in run.stats.items() if s is not None}
    if not stats:
        return
    log.write({"split": "data", "step": 0, **{f"{split}_{k}": v for split, s in stats.items()
                                               for k, v in s.metrics().items()}})
    if not quiet:
        for split, s in stats.items():
            tqdm.write(f"data ({split}): {s.summary()}")


def _check_finite(model, step: int, out: Path) -> None:
    """Trained weights must be finite before they are saved (a huge lr can overflow them in one update)."""
    for name, p in model.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else p  # (FSDP: this rank's shard)
        if p.requires_grad and not bool(torch.isfinite(local).all()):
            last = checkpoint.latest(out)
            kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
            raise TrainingError(f"step {step}: {name} is not finite after the update (learning rate too high?); "
                                f"nothing saved ({kept})")


def _hooks(model, config: RunConfig, total: int) -> TrainingHooks:
    """The training hooks of the run's method (none for full fine-tuning or a method without hooks), then the
    continual-learning loss terms the config asks for (EWC, O-LoRA's orthogonality)."""
    spec = config.spec
    hooks = spec.hooks(model, "default", total) if spec is not None and spec.hooks is not None else None
    chain = [h for h in (hooks, *continual.hooks(model, config)) if h is not None]
    return chain[0] if len(chain) == 1 else HookChain(chain) if chain else NO_HOOKS


def _write_fisher(run: Prepared, config: RunConfig, log: MetricsLog, step: int, quiet: bool) -> None:
    """`train.save_fisher_samples`: the adapter's diagonal Fisher over that many training rows (continual.py),
    with the log-likelihood of the targets (distillation too: its data's targets, not the teacher's)."""
    samples = min(config.train.save_fisher_samples, len(run.train_examples))
    pad = run.tokenizer.pad_token_id
    fisher = continual.fisher_diagonal(run.model, LOSSES.get(config.task, causal_lm_loss_sum), run.train_examples,
                                       lambda rows: collate_padded(rows, pad), samples, config.train.seed)
    path = continual.save_fisher(fisher, config.out, samples)
    log.write({"split": "fisher", "step": step, "samples": samples,
               "mean": float(sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values()))})
    if not quiet:
        tqdm.write(f"fisher: {samples} rows -> {path}")


def _write_artifacts(run: Prepared, config: RunConfig, directory: Path, hooks: TrainingHooks,
                     checkpointing: bool = False) -> Path:
    """The adapter (an adapter method) or the whole model (full fine-tuning), plus the resolved config
    (and, in checkpoints, the method's training state, e.g. AdaLoRA's allocator)."""
    directory = Path(directory)
    atomic_write_text(directory / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    if checkpointing:
        hooks.save(run.model, directory)
        if run.aux is not None and len(run.aux.state_dict()):
            save_file({k: t.detach().cpu().contiguous() for k, t in run.aux.state_dict().items()},
                      str(directory / AUX_NAME))
    if config.spec is None:
        target = directory / "model"
        run.model.save_pretrained(target)
        run.tokenizer.save_pretrained(target)
        if config.data.task_prefixes:
            write_task_prefixes(target, config.data.task_prefixes)
        return target
    adapter = save_adapter(run.model, directory / "adapter", base_model_name_or_path=config.model.name,
                           **hooks.save_options(config.out))
    if run.labels is not None:  # a classifier's label names, index = class id (read by lorakit eval)
        atomic_write_text(Path(adapter) / "labels.json", json.dumps(run.labels))
    if config.adapter.stacked_on:  # progressive LoRA: what the adapter must be applied on top of
        write_stack_record(adapter, config.adapter.stacked_on)
    if config.data.task_prefixes:  # multi-task prefixes: eval / generate / serve apply them by task name
        write_task_prefixes(adapter, config.data.task_prefixes)
    return adapter


def _real_tokens(batch: dict) -> int:
    """Non-padding tokens of a padded batch (packed rows carry almost no padding: counted whole)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None and mask.dim() == 2 else batch["input_ids"].numel()


def _one_epoch(loader) -> Iterator[dict]:
    state = loader.state_dict()
    yield from loader
    loader.load_state_dict(state)
