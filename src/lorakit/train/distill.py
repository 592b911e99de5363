"""Knowledge distillation (`task: distill`): the student learns the chat / text data from a teacher's
token distributions and, optionally, its hidden states.

Per target token (the tokens the SFT loss covers), with z the logits (vocab,) and T the temperature:

    loss = alpha · T² · KL(softmax(z_teacher / T) ‖ softmax(z_student / T))     logit KD (Hinton et al.)
         + (1 - alpha) · CE(z_student, label)                                  the plain SFT loss
         + hidden_weight · Σ_pairs mean_d (P h_student - h_teacher)²           feature loss (FitNets)

summed over the batch like every loss of the loop (which divides by the step's target count). P is
a learned (d_teacher, d_student) projection per hidden-state pair, identity-initialised when the
widths match; it trains with the adapter and is checkpointed, never shipped.

The teacher (`distill.teacher`): a model dir or embedded default, an adapter dir (its base with the
adapter merged in; an earlier checkpoint's `adapter/` gives self-distillation), or `self`: the
student's own model with its adapter disabled, which keeps a fine-tune close to what the base
predicted. Teacher and student must share the tokenizer's vocabulary.
In eval mode (held-out loss) the loss is the plain SFT loss, so eval loss and perplexity compare
with any other run's.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..state import disable_adapters
from ..tuners.layers import master_dtype
from .config import SELF_TEACHER as SELF, Task
from .losses import IGNORE, MODEL_INPUTS, body_and_head, causal_lm_loss_sum


def _hidden_size(model: nn.Module) -> int:
    return model.get_input_embeddings().embedding_dim


class Distiller(nn.Module):
    """The distillation loss of one run, called as the loop calls every loss: `distiller(student, batch)`.
    Its parameters are the feature projections (none without a feature loss); the teacher is held
    outside the module tree, so it is never trained, checkpointed, or wrapped by DDP."""

    def __init__(self, teacher: Optional[nn.Module], student: nn.Module, temperature: float = 2.0,
                 alpha: float = 0.5, hidden_weight: float = 0.0, hidden_layers: tuple = ((-1, -1),)):
        super().__init__()
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, checkpointed or moved with this one
        self.temperature, self.alpha, self.hidden_weight = temperature, alpha, hidden_weight
        self.hidden_layers = [tuple(p) for p in hidden_layers] if hidden_weight > 0 else []
        for pair in self.hidden_layers:
            for index, model, who in zip(pair, (student, student if teacher is None else teacher), ("student", "teacher")):
                states = model.config.num_hidden_layers + 1
                if not -states <= index < states:
                    raise InputError(f"distill.hidden_layers: {list(pair)}: the {who} has {states} hidden states "
                                     f"(0 = embeddings, -1 = last), no index {index}")
        width_s = _hidden_size(student)
        width_t = _hidden_size(teacher if teacher is not None else student)
        self.projections = nn.ModuleList(nn.Linear(width_s, width_t, bias=False) for _ in self.hidden_layers)
        for p in self.projections:
            if width_s == width_t:
                nn.init.eye_(p.weight)
        self.to(dtype=master_dtype(student.get_input_embeddings().weight.dtype))  # fp32 beside a 16-bit student

    def _targets(self, model: nn.Module, batch: dict, keep: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(logits (n_targets, vocab), hidden states (n_targets, d) of the requested layers) of `model`."""
        body, head = body_and_head(model)
        if body is None:
            raise InputError(f"task distill: {type(model).__name__}'s logits are not head(hidden states); "
                             "it cannot be distilled token by token here")
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out = body(**inputs, use_cache=False, output_hidden_states=bool(self.hidden_layers))
        logits = head(out.last_hidden_state[:, :-1][keep]).float()
        return logits, out.hidden_states if self.hidden_layers else ()

    def _teacher(self, student: nn.Module, batch: dict, keep: torch.Tensor):
        with torch.no_grad():
            if self.teacher is None:
                with disable_adapters(student):
                    return self._targets(student, batch, keep)
            if self.teacher.device != batch["input_ids"].device:  # a torchrun rank moved the student to its GPU
                self.teacher.to(batch["input_ids"].device)
            return self._targets(self.teacher, batch, keep)

    def forward(self, student: nn.Module, batch: dict) -> torch.Tensor:
        """Σ over the target tokens of `batch` of the loss above (a scalar)."""
        if not student.training:
            return causal_lm_loss_sum(student, batch)
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        t = self.temperature
        logits_t, hidden_t = self._teacher(student, batch, keep)
        logits_s, hidden_s = self._targets(student, batch, keep)
        if logits_s.shape != logits_t.shape:
            raise InputError(f"task distill: teacher logits {tuple(logits_t.shape)} vs student {tuple(logits_s.shape)}; "
                             "teacher and student need the same vocabulary")
        kd = F.kl_div(F.log_softmax(logits_s / t, -1), F.log_softmax(logits_t / t, -1), log_target=True,
                      reduction="sum") * t * t
        loss = self.alpha * kd
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * F.cross_entropy(logits_s, labels[keep], reduction="sum")
        for projection, (i, j) in zip(self.projections, self.hidden_layers):
            dtype = projection.weight.dtype
            h_s, h_t = hidden_s[i][:, :-1][keep].to(dtype), hidden_t[j][:, :-1][keep].to(dtype)
            loss = loss + self.hidden_weight * (projection(h_s) - h_t).float().pow(2).mean(-1).sum()
        return loss


def check_vocabularies(student_tokenizer, teacher_tokenizer, teacher_name: str) -> None:
    """Logit KD compares distributions token by token: both tokenizers must map text to the same ids."""
    student, teacher = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student != teacher:
        differ = sorted(set(student.items()) ^ set(teacher.items()))[:3]
        raise InputError(f"distill.teacher: {teacher_name}: its vocabulary differs from the student's "
                         f"({len(teacher)} vs {len(student)} tokens; e.g. {differ}); logit distillation needs the same one")


def check_teacher(teacher: str) -> None:
    """Fail in a second, before any model loads, when the teacher cannot be found."""
    from ..io import is_adapter_dir
    from ..models import ModelNotFoundError, resolve

    if teacher == SELF or is_adapter_dir(teacher):
        return
    try:
        resolve(teacher)
    except ModelNotFoundError as e:
        raise InputError(f"distill.teacher: {e}") from None


def build_distiller(section, student: nn.Module, tokenizer) -> Distiller:
    """The run's loss: the teacher loaded (merged, frozen, eval mode) unless it is `self`."""
    from ..inference import load_merged

    teacher = None
    if section.teacher != SELF:
        trained = load_merged(section.teacher)
        if trained.task is not Task.SFT:
            raise InputError(f"distill.teacher: {section.teacher}: a {trained.task.value} model; the teacher must be "
                             "a causal LM")
        check_vocabularies(tokenizer, trained.tokenizer, section.teacher)
        teacher = trained.model.eval().requires_grad_(False)
    return Distiller(teacher, student, section.temperature, section.alpha, section.hidden_weight,
                     section.hidden_layers)
