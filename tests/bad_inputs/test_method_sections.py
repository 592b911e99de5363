"""Bad run configs for the registry's other methods (IA³, bottleneck adapters, prompt / p- / prefix
tuning): their sections' values, and mistakes only the model reveals (the line then names the
method's section and the key)."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

CFG = "{tmp}/run.yaml"


def bad(id, changes, *names):
    """`lorakit train run.yaml` with `changes` merged into the good config; the line names the file too."""
    return Cli(id, ["train", CFG], [CFG, *names], setup=lambda env: env.config(changes))


def at_inject(id, method, section, *names):
    """`method: <method>` with its section; the mistake shows once the model is loaded."""
    return Cli(id, ["train", CFG], [f"{method}: ", *names],
               setup=lambda env: env.config({"method": method, method: section}, drop=["lora"]))


ROWS = [
    bad("ia3-section-with-lora", {"ia3": {"target_modules": ["k_proj"]}}, "ia3", "method"),
    bad("bottleneck-section-with-lora", {"bottleneck": {"placement": "houlsby"}}, "bottleneck", "method"),
    bad("ia3-feedforward-not-targeted",
        {"method": "ia3", "ia3": {"target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}}, "ia3"),
    bad("ia3-targets-bad-regex", {"method": "ia3", "ia3": {"target_modules": "k_proj("}}, "ia3.target_modules"),
    bad("ia3-init-string", {"method": "ia3", "ia3": {"init_ia3_weights": "yes"}}, "ia3.init_ia3_weights"),
    at_inject("ia3-targets-typo", "ia3", {"target_modules": ["k_projj"]}, "k_projj"),
    at_inject("ia3-feedforward-typo", "ia3", {"feedforward_modules": ["down_projj"]}, "feedforward_modules",
              "down_projj"),
    at_inject("ia3-exclude-typo", "ia3", {"exclude_modules": ["v_projj"]}, "exclude_modules", "v_projj"),
    at_inject("ia3-on-embeddings", "ia3", {"target_modules": ["embed_tokens"]}, "embed_tokens"),
    bad("bottleneck-placement-unknown", {"method": "bottleneck", "bottleneck": {"placement": "sideways"}},
        "bottleneck.placement"),
    bad("bottleneck-reduction-zero", {"method": "bottleneck", "bottleneck": {"reduction_factor": 0}},
        "bottleneck.reduction_factor"),
    bad("bottleneck-size-true", {"method": "bottleneck", "bottleneck": {"bottleneck_size": True}},
        "bottleneck.bottleneck_size"),
    bad("bottleneck-two-widths", {"method": "bottleneck", "bottleneck": {"reduction_factor": 4, "bottleneck_size": 8}},
        "reduction_factor", "bottleneck_size"),
    bad("bottleneck-scaling-nan", {"method": "bottleneck", "bottleneck": {"scaling": float("nan")}},
        "bottleneck.scaling"),
    bad("bottleneck-activation-unknown", {"method": "bottleneck", "bottleneck": {"non_linearity": "sigmoidal"}},
        "bottleneck.non_linearity"),
    bad("bottleneck-layer-negative", {"method": "bottleneck", "bottleneck": {"layers_to_transform": [-1]}},
        "bottleneck.layers_to_transform"),
    at_inject("bottleneck-layer-99", "bottleneck", {"layers_to_transform": [99]}, "layers_to_transform", "99"),
    at_inject("bottleneck-ffn-path-unknown", "bottleneck", {"ffn": "mlpp"}, "mlpp"),
    bad("prompt-tokens-zero", {"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 0}},
        "prompt_tuning.num_virtual_tokens"),
    bad("prompt-tokens-true", {"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": True}},
        "prompt_tuning.num_virtual_tokens"),
    bad("prompt-init-unknown", {"method": "prompt_tuning", "prompt_tuning": {"prompt_tuning_init": "ZEROS"}},
        "prompt_tuning.prompt_tuning_init"),
    bad("prompt-init-text-without-text", {"method": "prompt_tuning", "prompt_tuning": {"prompt_tuning_init": "TEXT"}},
        "prompt_tuning_init_text"),
    bad("p-tuning-encoder-unknown", {"method": "p_tuning", "p_tuning": {"encoder_reparameterization_type": "GRU"}},
        "p_tuning.encoder_reparameterization_type"),
    bad("p-tuning-dropout-one", {"method": "p_tuning", "p_tuning": {"encoder_dropout": 1.0}},
        "p_tuning.encoder_dropout"),
    bad("prefix-projection-string", {"method": "prefix_tuning", "prefix_tuning": {"prefix_projection": "yes"}},
        "prefix_tuning.prefix_projection"),
    bad("prefix-init-unknown", {"method": "prefix_tuning", "prefix_tuning": {"prefix_init": "TEXT"}},
        "prefix_tuning.prefix_init"),
    bad("prefix-vocab-init-with-projection", {"method": "prefix_tuning",
                                              "prefix_tuning": {"prefix_projection": True, "prefix_init": "SAMPLE_VOCAB"}},
        "prefix_tuning", "prefix_init: SAMPLE_VOCAB starts a direct prefix"),
    bad("prefix-with-packing", {"method": "prefix_tuning", "data": {"batching": "packed"}}, "data.batching"),
    at_inject("prompt-tokens-beyond-context", "prompt_tuning", {"num_virtual_tokens": 100000},
              "num_virtual_tokens=100000"),
    Cli("override-method-section-typo", ["train", CFG, "method=ia3", "ia3.target_modulez=[k_proj]"],
        ["ia3.target_modulez", "unknown key"], setup=lambda env: env.config(drop=["lora"])),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_method_config(row, env, capsys):
    check_cli(row, env, capsys)
