"""Data-parallel training under torchrun: one process per device, the single-process guarantees kept.

    torchrun --nproc-per-node 2 -m lorakit train run.yaml        # or: lorakit train run.yaml --nproc 2

What differs from one process, and where (the loop calls these; everything else is unchanged):

- `setup`: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) becomes the
  process group: nccl with one CUDA device per local rank when CUDA is there (and `train.device` is not
  cpu), gloo on CPU otherwise. Not under torchrun: one process on `train.device` (`precision.py`).
- `step_batches`: each optimizer step draws `grad_accum × world` batches from the one global batch
  sequence (the same length-grouped or packed plan as on one process) and deals them round-robin. Every
  example is used once per epoch across ranks, each rank's batches have the plan's padding, and every
  rank's loader stands at the same position, the one a checkpoint stores.
- the loss: each rank backpropagates `world × Σloss / T`, T the target tokens of the whole step summed over
  all ranks (`Context.sum`, before any backward). DDP and FSDP average gradients over ranks, so every rank
  ends with the gradient of the global batch's mean loss: 2 ranks × k micro-batches = 1 rank × 2k.
- `wrap`: DDP (model replicated, trainable gradients all-reduced) or FSDP2 `fully_shard` (parameters,
  frozen base included, sharded per decoder layer). The module they wrap is `_LossModule`, whose forward
  is the summed loss, so the wrapper's hooks run on every forward although the loss calls the decoder
  body and the head separately (see `losses.py`).
- rank 0 alone writes logs, the progress bar, checkpoints and the adapter; `whole_state` gathers FSDP's
  shards for it, and scatters a checkpoint back into shards on resume. Each rank's RNG state is saved
  beside the checkpoint (`rng.safetensors`) so dropout resumes exactly on every rank.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..errors import InputError
from ..tuners.base import TrainingHooks
from .precision import AUTO as AUTO_DEVICE, resolve_device

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RNG_FILE = "rng.safetensors"
"""In a distributed checkpoint: every rank's torch RNG state (`cpu.<rank>`, `cuda.<rank>`)."""
BIG_BASE = 0.4
"""`distributed: auto` shards (FSDP) a base whose frozen weights take more than this share of a GPU's memory."""


class DistributedSetupError(InputError):
    """The launch environment or the run config cannot make a working process group."""


@dataclass(frozen=True)
class Context:
    """This process's place in the job; one process: rank 0 of 1 and every method a no-op."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    restarts: int = 0
    """How often torchrun restarted the workers (`--max-restarts`); a restart resumes from the newest checkpoint."""
    launched: bool = False
    """Started by torchrun (there is a process group), whatever the world size."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks (one all-reduce, float64)."""
        if not self.launched:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (small picklable values between this job's own processes)."""
        if not self.launched:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.launched:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.launched:
            dist.barrier()

    def to_device(self, batch: dict) -> dict:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def setup(timeout_s: float = 1800, device: str = AUTO_DEVICE) -> Context:
    """This process's Context: under torchrun, the process group (made by the first call and kept until the
    process exits, so a script may train several times; a group the caller made is used as it is).
    Not under torchrun: one process on `device` (`train.device`, `precision.resolve_device`)."""
    env = os.environ
    if not any(k in env for k in ("RANK", "WORLD_SIZE")) and not (dist.is_available() and dist.is_initialized()):
        one = resolve_device(device)
        if one.type == "cuda":
            torch.cuda.set_device(one)
        return Context(device=one)
    if torch.device("cuda" if device == AUTO_DEVICE else device).index is not None:
        raise DistributedSetupError(f"train.device: {device}: under torchrun each rank takes cuda:LOCAL_RANK; "
                                    "use train.device: cuda (or auto)")
    missing = [k for k in TORCHRUN_ENV if k not in env]
    if missing and not dist.is_initialized():
        raise DistributedSetupError(
            f"{', '.join(k for k in ('RANK', 'WORLD_SIZE') if k in env)} set but {', '.join(missing)} not: "
            f"start distributed runs with torchrun (or `lorakit train CONFIG --nproc N`)")
    local, restarts = int(env.get("LOCAL_RANK", 0)), int(env.get("TORCHELASTIC_RESTART_COUNT", 0))
    if device != AUTO_DEVICE:
        resolve_device(device)  # cuda asked for, none there: the same one line as on one process
    if torch.cuda.is_available() and torch.device("cuda" if device == AUTO_DEVICE else device).type == "cuda":
        if local >= torch.cuda.device_count():
            raise DistributedSetupError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: "
                                        f"--nproc-per-node must not exceed the GPUs of a node")
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        _init_group(backend, device, timedelta(seconds=timeout_s), restarts)
    return Context(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, device=device,
                   restarts=restarts, launched=True)


def _init_group(backend: str, device: torch.device, timeout: timedelta, restarts: int) -> None:
    env, store = os.environ, None
    if restarts and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # Restarted workers share torchrun's store with the failed attempt, whose gloo / nccl addresses a
        # fast rank would read (pytorch#135712): this attempt's keys get their own prefix.
        store = dist.PrefixStore(f"lorakit/attempt-{restarts}/", dist.TCPStore(
            env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), is_master=False, timeout=timeout))
    dist.init_process_group(backend, store=store, rank=int(env["RANK"]) if store else -1,
                            world_size=int(env["WORLD_SIZE"]) if store else -1, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    # Kept for the life of the process: a second group made under torchrun's store would read this one's keys.
    atexit.register(dist.destroy_process_group)


def launch_command(nproc: int, argv: list[str], max_restarts: int = 0) -> list[str]:
    """The torchrun command that `lorakit train ... --nproc N` runs: one node, N processes, the same arguments."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "lorakit", *argv]


# ---------------------------------------------------------------------------------------------- data

def step_batches(loader, ctx: Context, per_rank: int) -> Iterator[list[dict]]:
    """Per optimizer step, this rank's `per_rank` micro-batches, forever (epochs roll over as on one process).

    One process: the loader's batches in order. Several: the step draws `per_rank × world` batch plans
    from `loader.sampler` (every rank draws all of them, so all loaders advance alike) and collates only
    plans rank, rank + world, rank + 2·world, ...
    """
    if ctx.world == 1:
        stream = _forever(loader)
        while True:
            yield [next(stream) for _ in range(per_rank)]
    plans = _forever(loader.sampler)
    while True:
        drawn = [next(plans) for _ in range(per_rank * ctx.world)]
        yield [loader.collate(plan) for plan in drawn[ctx.rank::ctx.world]]


def _forever(iterable) -> Iterator:
    while True:
        yield from iterable


# ---------------------------------------------------------------------------------------------- model

def choose_strategy(config, model: nn.Module, ctx: Context, hooks: TrainingHooks) -> Optional[str]:
    """None on one process; else `train.distributed`, where auto means fsdp for full fine-tuning or a base
    too big to replicate on each GPU, ddp otherwise (always ddp for a quantized base, and for a method whose
    training hooks add a loss term or work on the weights each step, e.g. AdaLoRA's rank allocator: they
    need whole parameters and gradients, and FSDP keeps shards)."""
    if not ctx.launched:
        return None
    per_step = type(hooks).regularizer is not TrainingHooks.regularizer or \
        type(hooks).after_step is not TrainingHooks.after_step
    if config.train.distributed == "fsdp" and per_step:
        raise DistributedSetupError(f"train.distributed: fsdp: the training hooks of this run (method "
                                    f"{config.method}'s, EWC or the orthogonality penalty) need whole parameters and "
                                    f"gradients, FSDP holds shards; use train.distributed: ddp")
    if config.train.distributed != "auto":
        return config.train.distributed
    if config.model.quantization or per_step:
        return "ddp"
    if config.spec is None:  # full fine-tuning
        return "fsdp"
    if ctx.device.type == "cuda":
        frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
        if frozen > BIG_BASE * torch.cuda.get_device_properties(ctx.device).total_memory:
            return "fsdp"
    return "ddp"


class _LossModule(nn.Module):
    """What DDP / FSDP wrap: forward(batch) is the summed loss of `batch` on `model`; forward(call=name,
    kwargs=...) calls `model.<name>(**kwargs)` (evaluation, generation), so the wrapper's hooks see it."""

    def __init__(self, model: nn.Module, loss_sum: Callable):
        super().__init__()
        self.model, self.loss_sum = model, loss_sum

    def forward(self, batch: Optional[dict] = None, call: Optional[str] = None, kwargs: Optional[dict] = None):
        if call is None:
            return self.loss_sum(self.model, batch)
        return getattr(self.model, call)(**(kwargs or {}))


class Replica:
    """The model as this rank trains it. `module` is the model itself (one process), DDP around a
    `_LossModule`, or a `_LossModule` sharded by `fully_shard`; `model` is always the plain model (under
    FSDP its parameters are DTensor shards; see `whole_state`)."""

    def __init__(self, model: nn.Module, loss_sum: Callable, ctx: Context, strategy: Optional[str]):
        self.model, self.ctx, self.strategy = model, ctx, strategy
        if strategy is None:
            self.module, self._loss = model, loss_sum
            return
        inner = _LossModule(model, loss_sum)  # a loss that is a module (distillation's) trains and syncs with it
        inner.to(ctx.device)
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # Buffers (a 4-bit base lives in buffers) are the same on every rank: synced once, not every forward.
            self.module = DistributedDataParallel(inner, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                                  else None, forward_sync_buffers=False)
        else:
            _shard(inner, model, ctx)
            self.module = inner

    def loss_sum(self, batch: dict) -> torch.Tensor:
        """Σ loss over this rank's `batch` (a scalar tensor)."""
        if self.strategy is None:
            return self._loss(self.model, self.ctx.to_device(batch))
        return self.module(self.ctx.to_device(batch))

    def accumulating(self, last: bool):
        """Around one micro-batch's forward+backward: DDP all-reduces on the step's last micro-batch only.
        FSDP reduce-scatters every micro-batch, keeping only sharded gradients (its memory is the point)."""
        return self.module.no_sync() if self.strategy == "ddp" and not last else nullcontext()

    def clip(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Global gradient norm before clipping to `max_norm` (FSDP: reduced over the shards)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def evaluation(self) -> tuple[object, Callable]:
        """(model, loss_sum) for `evaluate.score`: under DDP / FSDP every call goes through the wrapper
        (FSDP gathers the shards in step on all ranks), and every rank computes the same figures."""
        if self.strategy is None:
            return self.model, self._loss
        return _Through(self), lambda _model, batch: self.loss_sum(batch)


class _Through:
    """The surface of a model that evaluation uses (call, generate, train/eval, parameters), each call made
    through the wrapped `_LossModule`. Generation runs on every rank with `synced_gpus`, so ranks that
    finish early keep taking part in FSDP's gathers."""

    def __init__(self, replica: Replica):
        self._replica = replica

    @property
    def training(self) -> bool:
        return self._replica.model.training

    def train(self, mode: bool = True):
        self._replica.model.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self._replica.model.parameters()

    def __call__(self, **kwargs):
        return self._replica.module(call="forward", kwargs=self._replica.ctx.to_device(kwargs))

    def generate(self, **kwargs):
        return self._replica.module(call="generate", kwargs=dict(kwargs, synced_gpus=True))


def _shard(root: nn.Module, model: nn.Module, ctx: Context) -> None:
    """FSDP2: one unit per transformer block (the classes in `model._no_split_modules`), the rest (embeddings,
    final norm, head: tied weights stay together) in the root unit. Trainable tensors are broadcast from
    rank 0 first, so every rank shards the same adapter whatever its initialisation did."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)


@contextmanager
def whole_state(replica: Replica, optimizer: torch.optim.Optimizer, load: bool = False):
    """FSDP: inside, the trainable parameters (and their optimizer state) are whole plain tensors, so code
    written for one process reads or fills them: `checkpoint.save`, `save_adapter`, `save_pretrained`,
    `checkpoint.restore`. Every rank must enter (the gathers are collective). Other strategies: nothing.

    load=False (saving): rank 0 holds whole CPU copies, gathered one tensor at a time; the other ranks
    only take part in the gathers. load=True (resuming): every rank gets whole CPU placeholders to restore
    a checkpoint into; on exit each keeps its own shard of them and of the optimizer state loaded meanwhile.
    """
    if replica.strategy != "fsdp":
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for module in replica.module.modules():  # after a forward without backward (eval) the root stays unsharded
        if isinstance(module, FSDPModule):
            module.reshard()
    main = replica.ctx.is_main

    def gathered(t):
        if not isinstance(t, DTensor):
            return t
        whole = t.full_tensor()
        return whole.cpu() if main else None

    sharded = [p for g in optimizer.param_groups for p in g["params"]]
    if load:
        whole = {id(p): nn.Parameter(torch.zeros(p.shape, dtype=p.dtype)) for p in sharded}
    else:
        whole = {id(p): nn.Parameter(gathered(p)) if main else gathered(p) for p in sharded}
        moments = {p: {k: gathered(v) for k, v in optimizer.state[p].items()} for p in sharded if p in optimizer.state}
    if not (main or load):
        yield
        return
    kept_state = optimizer.state
    if not load:
        optimizer.state = type(kept_state)(dict, moments)
    _swap_parameters(replica.model, whole)
    try:
        yield
    finally:
        _swap_parameters(replica.model, {id(whole[id(p)]): p for p in sharded})
        if not load:
            optimizer.state = kept_state
        else:
            with torch.no_grad():
                for p in sharded:
                    p.to_local().copy_(_local_shard(whole[id(p)].data, p))
            for p, state in optimizer.state.items():
                for k, v in state.items():
                    if torch.is_tensor(v) and not isinstance(v, DTensor) and v.dim() and v.shape == p.shape:
                        state[k] = _as_shard_like(v, p)


def _as_shard_like(full: torch.Tensor, like):
    """The DTensor sharded like `like` holding `full` (every rank has all of `full`: no communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def _local_shard(full: torch.Tensor, like) -> torch.Tensor:
    return _as_shard_like(full, like).to_local()


def _swap_parameters(model: nn.Module, replacement: dict[int, nn.Parameter]) -> None:
    """Put `replacement[id(p)]` wherever a module holds parameter p (tied weights: every holder)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in replacement:
                module._parameters[name] = replacement[id(p)]


# ---------------------------------------------------------------------------------------------- checkpoints

def rng_tensors(ctx: Context) -> dict[str, torch.Tensor]:
    """Every rank's RNG state (collective), for rank 0 to write as `RNG_FILE` beside a checkpoint."""
    mine = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return {f"{kind}.{rank}": t for rank, states in enumerate(ctx.gather(mine)) for kind, t in states.items()}


def restore_rng(directory: Path, ctx: Context) -> None:
    """This rank's RNG state from a distributed checkpoint (`checkpoint.restore` set rank 0's on all)."""
    from safetensors.torch import load_file

    states = load_file(str(Path(directory) / RNG_FILE))
    torch.set_rng_state(states[f"cpu.{ctx.rank}"])
    if ctx.device.type == "cuda" and f"cuda.{ctx.rank}" in states:
        torch.cuda.set_rng_state(states[f"cuda.{ctx.rank}"], ctx.device)


def check_resumable(directory: Path, ctx: Context) -> None:
    """A checkpoint resumes only on as many ranks as wrote it: the data each step takes, the step count
    and every rank's RNG depend on it."""
    saved = int(json.loads((Path(directory) / "trainer_state.json").read_text()).get("world_size", 1))
    if saved != ctx.world:
        raise DistributedSetupError(f"{directory}: written by a run of {saved} process(es), this run has "
                                    f"{ctx.world}; resume it with --nproc {saved} (torchrun --nproc-per-node)")
