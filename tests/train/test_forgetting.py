"""The forgetting evaluator: several suites in one table, the general-skill probe against the base's own
answers (cached), rows appended to the run's metrics.jsonl, and before/after comparisons."""
import json
import shutil

import pytest

from lorakit.cli import main
from lorakit.inference import load_trained
from lorakit.train import forgetting
from lorakit.train.forgetting import EvalOptions, Probe, agreement

FAST = EvalOptions(max_length=64, max_new_tokens=3, batch_size=8, probe_max_new_tokens=3)


def test_agreement_averages_exact_match_f1_and_rouge_l():  # the scores themselves: tests/data/test_overlap.py
    assert agreement([" a b ", "c"], ["a b", "d"]) == {"agree_exact": 0.5, "agree_f1": 0.5, "agree_rouge_l": 0.5}


def test_bundled_probe_texts_are_general_and_sized():
    paragraphs, prompts = forgetting.general_text(), forgetting.general_prompts()
    assert 30 <= len(paragraphs) <= 60 and all(40 < len(p) < 400 for p in paragraphs)
    assert len(prompts) == 30 and len(set(prompts)) == 30


@pytest.fixture
def run_dir(tmp_path, chat_adapter_dir):
    """A run directory holding the random-B adapter (as the trainer lays it out)."""
    run = tmp_path / "run"
    shutil.copytree(chat_adapter_dir, run / "adapter")
    (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 1, "loss": 1.0}) + "\n")
    return run


def test_probe_references_are_the_base_answers_and_cached(run_dir, tmp_path, monkeypatch):
    trained = load_trained(run_dir / "adapter")
    prompts = forgetting.general_prompts()[:4]
    cache = tmp_path / "cache"
    references = forgetting.base_answers(trained, prompts, 3, cache=cache)
    import lorakit

    with lorakit.disable_adapters(trained.model):
        assert references == forgetting.answer(trained.model, trained.tokenizer, prompts, 3, 8)
    assert len(list(cache.glob("*.json"))) == 1
    monkeypatch.setattr(forgetting, "answer", lambda *a, **k: pytest.fail("regenerated a cached reference"))
    assert forgetting.base_answers(trained, prompts, 3, cache=cache) == references
    monkeypatch.undo()
    assert forgetting.base_answers(trained, prompts, 4, cache=cache) is not None  # another length: another entry
    assert len(list(cache.glob("*.json"))) == 2


def test_a_fresh_adapter_agrees_with_its_base(chat_lm_dir, tmp_path):
    import lorakit
    from lorakit.models import load_causal_lm

    model, _ = load_causal_lm(str(chat_lm_dir))
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"]))  # B = 0: the identity
    lorakit.save_adapter(model, tmp_path / "fresh", base_model_name_or_path=str(chat_lm_dir))
    rows = forgetting.general_probe(load_trained(tmp_path / "fresh"), Probe.ALL, FAST, cache=tmp_path / "c")
    assert [r["suite"] for r in rows] == ["general_text", "general_prompts"]
    assert rows[0]["perplexity"] > 1 and rows[0]["rows"] == len(forgetting.general_text())
    assert rows[1]["agree_exact"] == rows[1]["agree_f1"] == rows[1]["agree_rouge_l"] == 1.0


def test_eval_several_sets_with_probe_appends_rows_to_the_run(run_dir, sft_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path / "cache"))
    code = main(["eval", "--adapter", str(run_dir / "adapter"), "--data", sft_files[1], "--data",
                 "bundled:contacts_eval", "--max-samples", "2", "--max-new-tokens", "3", "--max-length", "256",
                 "--probe", "--probe-max-new-tokens", "3"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    header = out.splitlines()[0].split()
    assert header[:2] == ["suite", "rows"] and "exact_match" in header and "agree_rouge_l" in header
    assert "contacts_eval" in out and "general_text (probe)" in out and "general_prompts (probe)" in out
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train", "suite", "suite", "probe", "probe"]
    assert rows[1]["suite"] == sft_files[1] and rows[2]["suite"] == "contacts_eval" and rows[2]["rows"] == 2
    assert 0 <= rows[4]["agree_f1"] <= 1 and rows[3]["perplexity"] > 1


def test_eval_suites_come_from_the_run_config(run_dir, sft_files, tmp_path, capsys):
    import yaml

    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "unused"}, "data": {"train": sft_files[0]},
        "eval": {"suites": [sft_files[1], "bundled:orders_eval"]}}))
    out = tmp_path / "rows.jsonl"
    assert main(["eval", "--adapter", str(run_dir / "adapter"), "--max-samples", "1", "--max-new-tokens", "2",
                 "--out", str(out), "--json"]) == 0
    printed = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["suite"] for r in printed] == [sft_files[1], "orders_eval"]
    assert [json.loads(l)["suite"] for l in out.read_text().splitlines()] == [sft_files[1], "orders_eval"]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # --out: the run's log is untouched


def test_compare_prints_deltas_of_the_latest_rows(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for run, em, old in ((a, 0.8, 0.1), (b, 0.5, 0.9)):
        run.mkdir()
        rows = [{"split": "suite", "suite": "notes", "rows": 5, "exact_match": old},  # superseded
                {"split": "suite", "suite": "notes", "rows": 5, "exact_match": em, "loss": 1.0},
                {"split": "probe", "suite": "general_text", "rows": 36, "perplexity": 10.0 + em}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("notes") and "exact_match" in l)
    assert line.split()[-3:] == ["0.8000", "0.5000", "-0.3000"]
    assert main(["eval", "--compare", str(a), str(b), "--json"]) == 0
    pairs = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert {(p["suite"], p["metric"]) for p in pairs} == {("notes", "exact_match"), ("notes", "loss"),
                                                          ("general_text", "perplexity")}
    assert next(p for p in pairs if p["metric"] == "perplexity")["delta"] == pytest.approx(-0.3)
