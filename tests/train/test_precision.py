"""Device choice and mixed precision (train/precision.py): fp32 master adapter weights beside a 16-bit base,
float16's loss scaler, the fused optimizer. The CPU shows the dtype rules and the loop; the `gpu`-marked
tests (skipped without CUDA) check the CUDA path: the same training as on the CPU, autocast, the scaler."""
import json

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from helpers import tiny_llama
from lorakit.errors import InputError
from lorakit.models import load_causal_lm
from lorakit.train.loop import train
from lorakit.train import precision as precision_mod
from lorakit.train.optim import build_optimizer, can_fuse
from lorakit.train.precision import DeviceError, Precision, native_half_matmul, resolve_device, warn_slow_cpu_half
from lorakit.train.prepare import prepare
from lorakit.tuners.layers import layer_wrappers

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


def metrics(run_dir, split="train"):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def trained(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ---- device ------------------------------------------------------------------------------------------

@no_cuda
def test_auto_device_is_the_cpu_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_asking_for_cuda_without_it_is_a_one_line_input_error(spec):
    with pytest.raises(DeviceError, match=f"train.device: {spec}: CUDA is not available") as e:
        resolve_device(spec)
    assert isinstance(e.value, InputError) and "\n" not in str(e.value)


@no_cuda
def test_cuda_run_without_cuda_fails_before_the_model_loads(sft_config, monkeypatch):
    import lorakit.train.prepare as prepare

    monkeypatch.setattr(prepare, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    config = sft_config("train.device=cuda")
    with pytest.raises(DeviceError, match="train.device"):
        train(config, quiet=True)
    assert not config.out.exists()


# ---- dtype rules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_base_gets_fp32_master_adapters_and_fp32_gradients(dtype):
    model = tiny_llama().to(dtype)
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    params = trained(model)
    assert params and {p.dtype for p in params.values()} == {torch.float32}
    assert model.model.layers[0].self_attn.q_proj.base.weight.dtype == dtype
    ids = torch.randint(0, 128, (2, 12))
    logits = model(input_ids=ids).logits
    assert logits.dtype == dtype  # the forward runs in the base's dtype
    logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params.values())


def test_fresh_fp32_master_adapter_is_identity_on_a_bf16_base():
    base = tiny_llama().to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 10))
    want = base(input_ids=ids).logits
    lorakit.inject(base, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert torch.equal(base(input_ids=ids).logits, want)


def test_float32_precision_adds_nothing():
    p = Precision(torch.float32, torch.device("cpu"))
    assert p.autocast_dtype is None and p.scaler is None and p.state_dict() == {} and p.metrics(True) == {}
    assert Precision(torch.bfloat16, torch.device("cpu")).autocast_dtype is None  # CPU: the adapters cast
    assert Precision(torch.bfloat16, torch.device("cpu")).scaler is None  # bf16: fp32's exponent, no scaler


def test_a_half_base_on_a_cpu_without_native_half_matmuls_warns(monkeypatch, recwarn):
    assert isinstance(native_half_matmul(torch.bfloat16), bool)  # this machine's answer, whichever it is
    monkeypatch.setattr(precision_mod, "native_half_matmul", lambda dtype: False)
    with pytest.warns(UserWarning, match=r"model.dtype: bfloat16 on a CPU without native bfloat16 matmuls.*float32"):
        warn_slow_cpu_half("bfloat16", torch.device("cpu"))
    with pytest.warns(UserWarning, match="float16"):
        warn_slow_cpu_half("float16", torch.device("cpu"))
    warn_slow_cpu_half("float32", torch.device("cpu"))  # float32: nothing to say
    warn_slow_cpu_half("bfloat16", torch.device("cuda", 0))  # a GPU: not this CPU's kernels
    monkeypatch.setattr(precision_mod, "native_half_matmul", lambda dtype: True)
    warn_slow_cpu_half("bfloat16", torch.device("cpu"))  # native kernels: no warning
    assert not [w for w in recwarn if "native" in str(w.message)]


def test_optimizer_is_not_fused_on_the_cpu(llama):
    lorakit.inject(llama, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    assert not can_fuse(p for p in llama.parameters() if p.requires_grad)
    assert not build_optimizer(llama, lr=1e-3).defaults.get("fused")


def test_distillation_projection_is_an_fp32_master_beside_a_bf16_student():
    from lorakit.train.distill import Distiller

    teacher, student = tiny_llama().to(torch.bfloat16), tiny_llama(num_hidden_layers=1).to(torch.bfloat16)
    lorakit.inject(student, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    distiller = Distiller(teacher, student, hidden_weight=0.5)
    assert distiller.projections[0].weight.dtype == torch.float32
    ids = torch.randint(0, 128, (2, 10))
    student.train()
    loss = distiller(student, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    loss.backward()
    assert torch.isfinite(loss) and distiller.projections[0].weight.grad.dtype == torch.float32


# ---- training runs on the CPU ---------------------------------------------------------------------------

def test_bf16_run_trains_fp32_masters_and_its_adapter_reloads(sft_config, monkeypatch):
    config = sft_config("model.dtype=bfloat16", "train.steps=8", "train.lr=2e-2")
    run = prepare(config)
    monkeypatch.setattr(precision_mod, "native_half_matmul", lambda dtype: False)  # the warning, on any CPU
    with pytest.warns(UserWarning, match="without native bfloat16 matmuls"):
        result = train(config, run=run, quiet=True)
    losses = result.losses
    assert all(torch.isfinite(torch.tensor(losses))) and min(losses[-3:]) < losses[0]

    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}  # the masters, as peft saves them
    model, _ = load_causal_lm(config.model.name, "bfloat16")
    lorakit.load_adapter(model, result.adapter_dir)
    loaded = lorakit.save_adapter(model, config.out / "resaved")
    again = load_file(str(loaded / "adapter_model.safetensors"))
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)
    assert {w.adapters["default"].lora_A.dtype for _, w in layer_wrappers(model)} == {torch.float32}
    ids = torch.randint(0, 64, (2, 16))
    run.model.eval()
    assert torch.equal(model(input_ids=ids).logits, run.model(input_ids=ids).logits)


def test_bf16_run_follows_the_fp32_run(sft_config):
    """Same data, init and steps: the bf16 base's losses track the fp32 base's (bf16 rounding apart)."""
    fp32 = train(sft_config("train.steps=4"), quiet=True).losses
    bf16 = train(sft_config("model.dtype=bfloat16", "train.steps=4", "output_dir=" +
                            str(sft_config().out) + "-bf16"), quiet=True).losses
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_fp16_run_scales_the_loss_and_resumes_the_scale(sft_config):
    config = sft_config("model.dtype=float16", "train.steps=4", "train.save_every=2")
    result = train(config, quiet=True)
    rows = metrics(config.out)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all("loss_scale" in r and "skipped_step" in r for r in rows)
    assert sum(not r["skipped_step"] for r in rows) >= 1
    state = json.loads((config.out / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["grad_scaler"]["scale"] == rows[-1]["loss_scale"]
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_fp16_with_a_trained_fp16_copy_is_refused(sft_config):
    config = sft_config("model.dtype=float16", "lora.modules_to_save=[lm_head]")
    with pytest.raises(InputError, match="model.dtype: float16: .*lm_head"):
        train(config, quiet=True)


# ---- CUDA (skipped without it) ----------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_training_equals_cpu_training(sft_config):
    cpu = train(sft_config("train.device=cpu", "train.steps=4"), quiet=True)
    gpu_config = sft_config("train.device=cuda", "train.steps=4", "output_dir=" + str(sft_config().out) + "-cuda")
    gpu = train(gpu_config, quiet=True)
    assert gpu.losses == pytest.approx(cpu.losses, rel=1e-3, abs=1e-4)
    a = load_file(str(cpu.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(gpu.adapter_dir / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    assert gpu.final_eval.loss == pytest.approx(cpu.final_eval.loss, rel=1e-3)


@pytest.mark.gpu
def test_bf16_on_cuda_runs_under_autocast_with_fp32_masters(sft_config):
    model = tiny_llama().to(torch.bfloat16).cuda()
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    precision = Precision(torch.bfloat16, torch.device("cuda"))
    ids = torch.randint(0, 128, (2, 12), device="cuda")
    with precision.forward():
        assert torch.is_autocast_enabled("cuda")
        logits = model(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).sum().backward()
    assert {p.grad.dtype for p in trained(model).values()} == {torch.float32}

    result = train(sft_config("train.device=cuda", "model.dtype=bfloat16", "train.steps=8", "train.lr=2e-2"),
                   quiet=True)
    assert all(torch.isfinite(torch.tensor(result.losses))) and min(result.losses[-3:]) < result.losses[0]
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}


@pytest.mark.gpu
def test_fp16_on_cuda_trains_with_a_grad_scaler(sft_config):
    config = sft_config("train.device=cuda", "model.dtype=float16", "train.steps=8", "train.lr=2e-2")
    result = train(config, quiet=True)
    rows = metrics(config.out)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all("loss_scale" in r for r in rows) and sum(not r["skipped_step"] for r in rows) >= 4
    assert min(result.losses[-3:]) < result.losses[0]
    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}


@pytest.mark.gpu
def test_fused_adamw_is_chosen_on_cuda(llama):
    lorakit.inject(llama, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    llama.cuda()
    optimizer = build_optimizer(llama, lr=1e-3)
    assert optimizer.defaults["fused"] is True
    llama(input_ids=torch.randint(0, 128, (1, 8), device="cuda")).logits.sum().backward()
    optimizer.step()  # the fused kernel takes these parameters
