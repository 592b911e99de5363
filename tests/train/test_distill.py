"""Distillation (`task: distill`): the loss is the written formula, a smaller student learns towards its
teacher, self-distillation starts from a zero KD term, projections resume, bad setups fail up front."""
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import chat_llama, randomize_lora_b
from lorakit import LoraConfig, inject
from lorakit.compress import prune_to_dir
from lorakit.errors import InputError
from lorakit.inference import load_trained
from lorakit.strict import ConfigError
from lorakit.train import checkpoint
from lorakit.train.distill import Distiller
from lorakit.train.loop import train


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, chat_lm_dir):
    """The 2-layer chat Llama cut to its first layer (weights from the teacher): a smaller student."""
    out = tmp_path_factory.mktemp("student") / "student"
    prune_to_dir(str(chat_lm_dir), out, "structured", sparsity=0.0, keep_layers=[0])
    return out


@pytest.fixture
def distill_config(sft_config, chat_lm_dir, student_dir):
    def make(*overrides):
        return sft_config("task=distill", f"model.name={student_dir}", f"distill.teacher={chat_lm_dir}", *overrides)
    return make


def _batch(tokenizer):
    ids = torch.tensor([tokenizer.encode("Lunch with Ana on Friday at noon, then the dentist at 3.")])
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_loss_is_the_written_formula(bpe_tokenizer):
    teacher, student = chat_llama(bpe_tokenizer), chat_llama(bpe_tokenizer, num_hidden_layers=1, hidden_size=32,
                                                              intermediate_size=64)
    batch = _batch(bpe_tokenizer)
    distiller = Distiller(teacher, student, temperature=3.0, alpha=0.7, hidden_weight=0.5, hidden_layers=[(1, 2)])
    torch.nn.init.normal_(distiller.projections[0].weight)
    student.train()
    got = distiller(student, batch)

    keep = batch["labels"][0, 1:] != -100
    with torch.no_grad():
        out_t = teacher(input_ids=batch["input_ids"], output_hidden_states=True)
    out_s = student(input_ids=batch["input_ids"], output_hidden_states=True)
    z_t, z_s = out_t.logits[0, :-1][keep], out_s.logits[0, :-1][keep]
    p_t = F.softmax(z_t / 3.0, -1)
    kd = (p_t * (p_t.log() - F.log_softmax(z_s / 3.0, -1))).sum() * 9.0
    ce = F.cross_entropy(z_s, batch["labels"][0, 1:][keep], reduction="sum")
    h_s, h_t = out_s.hidden_states[1][0, :-1][keep], out_t.hidden_states[2][0, :-1][keep]
    feature = ((h_s @ distiller.projections[0].weight.T - h_t) ** 2).mean(-1).sum()
    torch.testing.assert_close(got, 0.7 * kd + 0.3 * ce + 0.5 * feature, rtol=1e-4, atol=1e-4)

    student.eval()  # held-out loss stays the plain SFT loss
    torch.testing.assert_close(distiller(student, batch), ce, rtol=1e-4, atol=1e-4)


def test_self_distillation_starts_at_zero_kd_and_is_pulled_back(bpe_tokenizer):
    model = chat_llama(bpe_tokenizer)
    inject(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    batch = _batch(bpe_tokenizer)
    distiller = Distiller(None, model, alpha=1.0)
    model.train()
    with torch.no_grad():
        assert distiller(model, batch).item() == pytest.approx(0.0, abs=1e-5)  # fresh adapter = the base
        randomize_lora_b(model, std=0.5)
        assert distiller(model, batch).item() > 0.1


def test_a_smaller_student_moves_towards_its_teacher(distill_config, chat_lm_dir, student_dir):
    config = distill_config("train.steps=12", "distill.alpha=1.0", "distill.hidden_weight=0.1")
    result = train(config, quiet=True)
    assert sum(result.losses[-3:]) < 0.7 * sum(result.losses[:3])
    trained = load_trained(result.adapter_dir)  # an ordinary causal-LM adapter on the student
    assert trained.base == str(student_dir) and trained.model.config.num_hidden_layers == 1
    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM"


def test_resume_restores_the_feature_projection(distill_config, tmp_path):
    settings = ["train.steps=4", "train.save_every=2", "distill.hidden_weight=1.0", "train.lr=5e-3"]
    reference = train(distill_config(*settings, f"output_dir={tmp_path / 'a'}"), quiet=True)
    stopped = distill_config(*settings, f"output_dir={tmp_path / 'b'}")
    train(stopped.model_copy(update={"train": stopped.train.model_copy(update={"steps": 2})}), quiet=True)
    assert (checkpoint.latest(stopped.out) / "aux.safetensors").is_file()
    resumed = train(stopped, resume=True, quiet=True)
    assert resumed.losses == pytest.approx(reference.losses[2:], rel=0, abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["task=distill"], r"distill\.teacher: required"),
    (["distill.temperature=3"], r"`distill:` settings are given but task is 'sft'"),
    (["task=distill", "distill.teacher=self", "method=full"], r"distill\.teacher: self .*adapter"),
    (["task=distill", "distill.teacher=x", "distill.alpha=1.5"], r"distill\.alpha"),
])
def test_config_errors_name_the_key(sft_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        sft_config(*overrides)


def test_a_teacher_with_another_vocabulary_or_path_fails_before_training(sft_config, tiny_lm_dir, student_dir,
                                                                          tmp_path):
    with pytest.raises(InputError, match=r"distill\.teacher: .*vocabulary differs"):
        train(sft_config("task=distill", f"model.name={student_dir}", f"distill.teacher={tiny_lm_dir}"), quiet=True)
    with pytest.raises(InputError, match=r"distill\.teacher: .*not a local model directory"):
        train(sft_config("task=distill", f"model.name={student_dir}", f"distill.teacher={tmp_path / 'nope'}"),
              quiet=True)
