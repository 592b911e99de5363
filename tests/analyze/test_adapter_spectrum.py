"""`analyze_adapter`: the spectrum from the low-rank factors equals a dense SVD of delta_weight()."""
import json

import pytest
import torch

from helpers import randomize_lora_b, tiny_llama
from lorakit import LoraConfig, inject, save_adapter
from lorakit.analyze.spectrum import analyze_adapter, energy_rank, entropy_rank, factor_spectrum, plot_spectra
from lorakit.tuners.layers import layer_wrappers


def saved_adapter(tmp_path, r=8, rank_of_b=None, randomize=True, **lora):
    model = tiny_llama()
    inject(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", **lora))
    if randomize:
        randomize_lora_b(model, std=0.3)
    if rank_of_b is not None:  # B's columns beyond `rank_of_b` zeroed: ΔW has that rank
        with torch.no_grad():
            for _, layer in layer_wrappers(model):
                layer.adapters["default"].lora_B[:, rank_of_b:] = 0
    save_adapter(model, tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_spectrum_equals_dense_svd_of_delta_weight(tmp_path):
    model, path = saved_adapter(tmp_path, use_rslora=True)
    spec = analyze_adapter(path)
    wrappers = dict(layer_wrappers(model))
    assert [m.module for m in spec.modules] and len(spec.modules) == len(wrappers)
    for m in spec.modules:
        delta = wrappers[m.module].adapters["default"].delta_weight().detach().double()
        dense = torch.linalg.svdvals(delta)[: m.rank]
        assert m.shape == tuple(delta.shape)
        torch.testing.assert_close(torch.tensor(m.singular_values, dtype=torch.float64), dense, rtol=1e-5, atol=1e-7)
        assert m.frobenius == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-5)


def test_low_rank_update_gets_a_smaller_suggested_rank(tmp_path):
    _, path = saved_adapter(tmp_path, r=8, rank_of_b=2)
    spec = analyze_adapter(path)
    assert all(m.energy_rank <= 2 for m in spec.modules)
    assert spec.suggested_rank in (1, 2) and spec.rank == 8


def test_rank_pattern_for_kinds_that_need_fewer_directions(tmp_path):
    model = tiny_llama()
    inject(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    randomize_lora_b(model, std=0.3)
    with torch.no_grad():
        for name, layer in layer_wrappers(model):
            if name.endswith("v_proj"):
                layer.adapters["default"].lora_B[:, 1:] = 0  # v_proj's ΔW: rank 1 in every layer
    save_adapter(model, tmp_path / "adapter")
    spec = analyze_adapter(tmp_path / "adapter", energy=0.9999)
    assert spec.suggested_rank is None and spec.rank_pattern == {"v_proj": 1}


def test_full_rank_update_keeps_its_rank(tmp_path):
    _, path = saved_adapter(tmp_path, r=4)
    spec = analyze_adapter(path, energy=0.9999)
    assert max(m.energy_rank for m in spec.modules) == 4 and spec.suggested_rank is None


def test_untrained_adapter_has_zero_spectrum(tmp_path):
    _, path = saved_adapter(tmp_path, randomize=False)
    spec = analyze_adapter(path)
    assert all(m.frobenius == 0 and m.energy_rank == 0 and m.entropy_rank == 0 for m in spec.modules)
    assert spec.suggested_rank is None


def test_effective_ranks_of_known_spectra():
    flat = torch.ones(4, dtype=torch.float64)
    assert entropy_rank(flat) == pytest.approx(4) and energy_rank(flat, 0.9) == 4
    one = torch.tensor([3.0, 0, 0, 0], dtype=torch.float64)
    assert entropy_rank(one) == pytest.approx(1) and energy_rank(one, 0.9) == 1
    s = torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)  # energies 9, 1, 0.01: 90% of 10.01 needs 2
    assert energy_rank(s, 0.9) == 2 and energy_rank(s, 0.89) == 1


def test_factor_spectrum_is_scaled():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 10, generator=g), torch.randn(7, 3, generator=g)
    torch.testing.assert_close(factor_spectrum(a, b, 2.5), torch.linalg.svdvals(2.5 * (b @ a).double())[:3])


def test_png_and_json_from_the_cli(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from lorakit.cli import main

    _, path = saved_adapter(tmp_path)
    png = tmp_path / "spectra.png"
    assert main(["analyze", "adapter", str(path), "--png", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {m["module"] for m in out["modules"]} and out["rank"] == 8
    assert main(["analyze", "adapter", str(path)]) == 0
    assert "rank 8" in capsys.readouterr().out


def test_plot_refuses_cleanly_without_matplotlib(tmp_path, monkeypatch):
    import builtins

    from lorakit.errors import InputError

    _, path = saved_adapter(tmp_path)
    spec = analyze_adapter(path)
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "matplotlib" else real(name, *a, **k))
    with pytest.raises(InputError, match="matplotlib"):
        plot_spectra(spec, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
