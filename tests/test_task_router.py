"""TaskRouter: nearest-centroid (and linear) routing on mean-pooled embeddings, save/load, the
`lorakit router build` and `lorakit generate --router` commands. A tiny random BERT stands in for
MiniLM; the real MiniLM on the three bundled chat tasks is the slow test at the end."""
import json

import pytest
import torch

import lorakit
from lorakit.cli import main
from lorakit.task_router import RouterError, RouterKind, TaskRouter, TaskSpec, prompts_of

WORDS = {"notes": ["Lunch with Ana on Friday at noon.", "Dinner with Priya on Monday at 7pm.",
                   "Gym with Lee on Sunday at 6am.", "Coffee with Sam on Tuesday at 3pm."],
         "numbers": ["555 201 3344", "212 555 0199", "310 555 7788", "415 555 2020"]}


def test_centroids_are_unit_means_and_training_prompts_route_home(tiny_encoder_dir):
    router = TaskRouter(str(tiny_encoder_dir)).fit({n: TaskSpec(f"/a/{n}") for n in WORDS}, prompts=WORDS)
    assert router.centroids.shape == (2, 32)
    assert torch.allclose(router.centroids.norm(dim=-1), torch.ones(2))
    embedded = router.encoder(WORDS["notes"])
    assert torch.allclose(router.centroids[0], torch.nn.functional.normalize(embedded.mean(0), dim=0), atol=1e-6)
    assert router.route(WORDS["notes"] + WORDS["numbers"]) == ["notes"] * 4 + ["numbers"] * 4
    assert router.adapter_dirs(WORDS["numbers"][1]) == ["/a/numbers"]
    assert router.accuracy(WORDS) == {"notes": 1.0, "numbers": 1.0, "overall": 1.0}


def test_mean_pooling_ignores_padding(tiny_encoder_dir):
    router = TaskRouter(str(tiny_encoder_dir))
    alone = router.encoder(["Lunch."])
    padded = router.encoder(["Lunch.", "A much longer sentence about a dinner on Friday evening."])[:1]
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("kind", list(RouterKind))
def test_save_load_round_trip_routes_the_same(kind, tiny_encoder_dir, tmp_path):
    router = TaskRouter(str(tiny_encoder_dir), kind).fit({n: TaskSpec(f"/a/{n}") for n in WORDS}, prompts=WORDS)
    router.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["router.json", "router.safetensors"]
    loaded = TaskRouter.load(tmp_path / "r")
    prompts = ["Tea with Bo on Friday.", "555 123 4567"]
    assert loaded.kind is kind and loaded.names == ["notes", "numbers"]
    assert torch.allclose(loaded.scores(prompts), router.scores(prompts), atol=1e-6)
    assert loaded.route(prompts) == router.route(prompts)


def test_linear_router_fits_its_training_prompts(tiny_encoder_dir):
    router = TaskRouter(str(tiny_encoder_dir), RouterKind.LINEAR).fit(
        {n: TaskSpec(f"/a/{n}") for n in WORDS}, prompts=WORDS)
    assert router.accuracy(WORDS)["overall"] == 1.0


def test_prompts_of_chat_data_are_the_user_turns():
    prompts = prompts_of("bundled:contacts_eval", limit=3)
    assert len(prompts) == 3 and all(isinstance(p, str) and p for p in prompts)


@pytest.mark.parametrize("change, names", [
    (lambda d: (d / "router.json").write_text("{"), ["router.json"]),
    (lambda d: (d / "router.safetensors").write_bytes(b"\0" * 16), ["router.safetensors"]),
    (lambda d: (d / "router.safetensors").unlink(), ["router.safetensors", "missing"]),
    (lambda d: (d / "router.json").write_text(json.dumps({"version": 1, "kind": "knn"})), ["kind", "'knn'"]),
])
def test_a_broken_router_dir_is_one_clear_error(change, names, tiny_encoder_dir, tmp_path):
    TaskRouter(str(tiny_encoder_dir)).fit({n: TaskSpec(f"/a/{n}") for n in WORDS}, prompts=WORDS).save(tmp_path / "r")
    change(tmp_path / "r")
    with pytest.raises(RouterError) as e:
        TaskRouter.load(tmp_path / "r")
    assert all(n in str(e.value) for n in names) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, chat_lm_dir):
    from helpers import make_adapter

    root = tmp_path_factory.mktemp("task-adapters")
    return {name: make_adapter(chat_lm_dir, root / name, r=2, target_modules=["q_proj", "v_proj"])
            for name in ("notes", "contacts")}


def test_router_build_then_generate_routes_the_prompt(two_adapters, tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "router"
    tasks = [f"notes={two_adapters['notes']}:bundled:quickstart_train",
             f"contacts={two_adapters['contacts']}:bundled:contacts_train"]
    assert main(["router", "build", *sum((["--task", t] for t in tasks), []), str(out), "--encoder",
                 str(tiny_encoder_dir), "--max-prompts", "40"]) == 0
    assert "notes (40 prompts)" in capsys.readouterr().out
    router = lorakit.TaskRouter.load(out)
    prompt = "Lunch with Ana on Friday at noon."
    task = router.route(prompt)[0]
    assert main(["generate", "--router", str(out), prompt, "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert f"[routed to {task}]" in captured.err
    from lorakit.inference import generate, load_trained

    assert captured.out.strip() == generate(load_trained(two_adapters[task]), prompt, max_new_tokens=4)
    assert main(["router", "build", *sum((["--task", t] for t in tasks), []), str(out), "--encoder",
                 str(tiny_encoder_dir), "--max-prompts", "8", "--kind", "linear", "--overwrite"]) == 0
    assert TaskRouter.load(out).kind is RouterKind.LINEAR


@pytest.mark.slow
def test_minilm_routes_the_three_bundled_chat_tasks(capsys):
    """The real all-MiniLM-L6-v2, centroids from each task's training prompts, scored on its eval prompts."""
    tasks = {"notes": "quickstart", "contacts": "contacts", "orders": "orders"}
    router = TaskRouter().fit({n: TaskSpec(f"/unused/{n}", f"bundled:{t}_train") for n, t in tasks.items()})
    held_out = {n: prompts_of(f"bundled:{t}_eval") for n, t in tasks.items()}
    scores = router.accuracy(held_out)
    with capsys.disabled():
        print("\nMiniLM routing accuracy on the bundled eval prompts:",
              ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    assert scores["overall"] >= 0.95
