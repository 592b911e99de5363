"""Bad command lines for the analysis tools: `lorakit analyze memory | adapter` and `lorakit recommend`."""
import json

import pytest

from bad_inputs.harness import Cli, check_cli, table

MEM = ["analyze", "memory", "--model", "llama-2-7b", "--method", "lora"]
CONFIG = "{tmp}/config.json"
TINY = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def config(changes=None, text=None):
    return lambda env: env.write("config.json", text if text is not None else json.dumps({**TINY, **(changes or {})}))


REC = ["recommend", "--memory-gb", "24", "--examples", "5000"]

ROWS = [
    Cli("analyze-no-kind", ["analyze"], ["KIND"]),
    Cli("analyze-memory-model-missing", ["analyze", "memory", "--model", "{tmp}/nope", "--method", "lora"],
        ["{tmp}/nope"]),
    Cli("analyze-memory-no-method", ["analyze", "memory", "--model", "llama-2-7b"], ["--method"]),
    Cli("analyze-memory-method-unknown", MEM[:-1] + ["dora"], ["--method", "dora"]),
    Cli("analyze-memory-r-zero", MEM + ["--r", "0"], ["--r", "0"]),
    Cli("analyze-memory-batch-tokens-text", MEM + ["--batch-tokens", "many"], ["--batch-tokens", "many"]),
    Cli("analyze-memory-dtype-unknown", MEM + ["--dtype", "int8"], ["--dtype", "int8"]),
    Cli("analyze-memory-optimizer-unknown", MEM + ["--optimizer", "lion"], ["--optimizer", "lion"]),
    Cli("analyze-memory-device-unknown", MEM + ["--device", "tpu"], ["--device", "tpu"]),
    Cli("analyze-memory-target-unknown", MEM + ["--target-modules", "c_attn"], ["--target-modules", "c_attn"]),
    Cli("analyze-memory-dropout-one", MEM + ["--lora-dropout", "1"], ["--lora-dropout", "1"]),
    Cli("analyze-memory-config-key-wrong-type", ["analyze", "memory", "--model", CONFIG, "--method", "lora"],
        [CONFIG, "hidden_size"], setup=config({"hidden_size": "wide"})),
    Cli("analyze-memory-config-key-missing", ["analyze", "memory", "--model", CONFIG, "--method", "lora"],
        [CONFIG, "intermediate_size"], setup=config({"intermediate_size": None})),
    Cli("analyze-memory-config-kv-heads", ["analyze", "memory", "--model", CONFIG, "--method", "lora"],
        [CONFIG, "num_key_value_heads"], setup=config({"num_key_value_heads": 3})),
    Cli("analyze-memory-config-moe", ["analyze", "memory", "--model", CONFIG, "--method", "lora"],
        [CONFIG, "mixture-of-experts"], setup=config({"num_local_experts": 8})),
    Cli("analyze-memory-config-not-json", ["analyze", "memory", "--model", CONFIG, "--method", "lora"], [CONFIG],
        setup=config(text="{not json")),
    Cli("analyze-memory-config-list", ["analyze", "memory", "--model", CONFIG, "--method", "lora"], [CONFIG],
        setup=config(text="[1, 2]")),
    Cli("analyze-memory-dir-without-config", ["analyze", "memory", "--model", "{tmp}/empty", "--method", "full"],
        ["{tmp}/empty", "config.json"], setup=lambda env: env.write("empty/readme.txt", "no config")),
    Cli("analyze-adapter-missing", ["analyze", "adapter", "{tmp}/nope"], ["{tmp}/nope"]),
    Cli("analyze-adapter-is-a-model", ["analyze", "adapter", "{model}"], ["{model}"]),
    Cli("analyze-adapter-dora", ["analyze", "adapter", "{tmp}/dora"], ["{tmp}/dora", "DoRA"],
        setup=lambda env: env.adapter_copy("dora", {"use_dora": True})),
    Cli("analyze-adapter-ia3", ["analyze", "adapter", "{tmp}/ia3"], ["{tmp}/ia3", "IA3"],
        setup=lambda env: env.write("ia3/adapter_config.json", json.dumps(
            {"peft_type": "IA3", "target_modules": ["v_proj"], "feedforward_modules": []}))),
    Cli("analyze-adapter-weights-missing", ["analyze", "adapter", "{tmp}/empty"], ["{tmp}/empty"],
        setup=lambda env: (env.adapter_copy("empty") / "adapter_model.safetensors").unlink()),
    Cli("analyze-adapter-energy-zero", ["analyze", "adapter", "{adapter}", "--energy", "0"], ["--energy", "0"]),
    Cli("analyze-adapter-energy-text", ["analyze", "adapter", "{adapter}", "--energy", "most"], ["--energy", "most"]),
    Cli("recommend-no-model", REC, ["--params", "--model"]),
    Cli("recommend-params-unit", ["recommend", "--params", "7X", "--memory-gb", "24", "--examples", "5000"],
        ["--params", "7X"]),
    Cli("recommend-params-and-model", REC + ["--params", "7B", "--model", "llama-2-7b"], ["--model", "--params"]),
    Cli("recommend-memory-negative", ["recommend", "--params", "7B", "--memory-gb", "-1", "--examples", "5"],
        ["--memory-gb", "-1"]),
    Cli("recommend-memory-nan", ["recommend", "--params", "7B", "--memory-gb", "nan", "--examples", "5"],
        ["--memory-gb", "nan"]),
    Cli("recommend-examples-zero", ["recommend", "--params", "7B", "--memory-gb", "24", "--examples", "0"],
        ["--examples", "0"]),
    Cli("recommend-task-unknown", REC + ["--params", "7B", "--task", "chat"], ["--task", "chat"]),
    Cli("recommend-model-missing", REC + ["--model", "{tmp}/nope.json"], ["{tmp}/nope.json"]),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_analyze_bad_input(row, env, capsys):
    check_cli(row, env, capsys)
