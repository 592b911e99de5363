"""Bad command lines and recipes for the commands that build new weights from trained ones:
`lorakit combine` (adapter arithmetic), `lorakit extract` (a LoRA from a weight difference) and
`lorakit merge-models` (mergekit-format recipes)."""
import pytest

from bad_inputs.harness import Cli, check_cli, table

OUT = "{tmp}/out"
COMBINE = ["combine", "{adapter}", "{tmp}/other", OUT]
EXTRACT = ["extract", "--base", "{model}", "--tuned", "{model}", OUT]
RECIPE = "{tmp}/recipe.yaml"


def write(relative, content):
    return lambda env: env.write(relative, content)


def non_empty_out(env):
    env.write("out/keep.txt", "precious")


def combine(id, argv, names, setup=None):
    """`lorakit combine {adapter} {tmp}/other ...`: {tmp}/other is a second copy of the good adapter."""
    return Cli(id, argv, names, setup=lambda env: (env.adapter_copy("other"), setup and setup(env)))


def recipe(id, text, *names, argv=()):
    """`lorakit merge-models recipe.yaml OUT` where recipe.yaml holds `text` ({model} filled in)."""
    return Cli(id, ["merge-models", RECIPE, OUT, *argv], names, setup=lambda env: env.write("recipe.yaml", env.fmt(text)))


def broken_model(file, content):
    """{tmp}/model: a copy of the tiny model with `file` replaced by `content` (None: cut to 100 bytes); the
    recipe merges it."""
    def setup(env):
        model = env.model_copy()
        (model / file).write_bytes(content.encode() if isinstance(content, str) else
                                   content if content is not None else (model / file).read_bytes()[:100])
        env.write("recipe.yaml", "merge_method: linear\nmodels:\n  - model: " + str(model) +
                  "\n    parameters: {weight: 1.0}\n")
    return setup


LINEAR = "merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1.0}}\n"

ROWS = [
    # combine
    Cli("combine-no-output", ["combine", "{adapter}"], ["adapter directory", "output directory"]),
    combine("combine-weights-count", [*COMBINE, "--weights", "1"], ["1 weights", "2 adapters"]),
    combine("combine-weights-nan", [*COMBINE, "--weights", "nan", "1"], ["weights", "nan"]),
    combine("combine-weights-text", [*COMBINE, "--weights", "one", "1"], ["--weights", "one"]),
    combine("combine-method-unknown", [*COMBINE, "--method", "average"], ["--method", "average"]),
    combine("combine-density-zero", [*COMBINE, "--method", "ties", "--density", "0"], ["--density", "0"]),
    combine("combine-density-nan", [*COMBINE, "--method", "ties", "--density", "nan"], ["--density", "nan"]),
    combine("combine-svd-rank-zero", [*COMBINE, "--method", "svd", "--svd-rank", "0"], ["--svd-rank", "0"]),
    combine("combine-svd-clamp-two", [*COMBINE, "--method", "svd", "--svd-clamp", "2"], ["--svd-clamp", "2"]),
    combine("combine-into-non-empty-dir", COMBINE, [OUT, "--overwrite"], non_empty_out),
    combine("combine-into-file", COMBINE, [OUT], write("out", "x")),
    Cli("combine-into-an-input", ["combine", "{tmp}/adapter", "{adapter}", "{tmp}/adapter"], ["{tmp}/adapter"],
        setup=lambda env: env.adapter_copy()),
    # extract
    Cli("extract-no-rank", EXTRACT, ["rank", "energy"]),
    Cli("extract-rank-zero", [*EXTRACT, "--rank", "0"], ["--rank", "0"]),
    Cli("extract-energy-above-one", [*EXTRACT, "--energy", "1.5"], ["--energy", "1.5"]),
    Cli("extract-tuned-missing", ["extract", "--base", "{model}", "--tuned", "{tmp}/nope", OUT, "--rank", "2"],
        ["--tuned", "{tmp}/nope"]),
    Cli("extract-tuned-is-adapter", ["extract", "--base", "{model}", "--tuned", "{adapter}", OUT, "--rank", "2"],
        ["--tuned", "{adapter}"]),
    Cli("extract-base-missing", ["extract", "--base", "{tmp}/nope", "--tuned", "{model}", OUT, "--rank", "2"],
        ["--base", "{tmp}/nope"]),
    Cli("extract-into-non-empty-dir", [*EXTRACT, "--rank", "2"], [OUT, "--overwrite"], setup=non_empty_out),
    Cli("extract-into-file", [*EXTRACT, "--rank", "2"], [OUT], setup=write("out", "x")),
    # merge-models
    Cli("merge-models-recipe-missing", ["merge-models", "{tmp}/nope.yaml", OUT], ["{tmp}/nope.yaml"]),
    recipe("merge-models-yaml-error", "merge_method: linear\nmodels: [\n", RECIPE, "invalid YAML"),
    recipe("merge-models-not-a-mapping", "- linear\n", RECIPE),
    recipe("merge-models-method-unknown", "merge_method: lineer\nmodels:\n  - model: {model}\n", RECIPE, "lineer"),
    recipe("merge-models-weight-text",
           "merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: abc}}\n", RECIPE, "weight"),
    recipe("merge-models-unknown-key", LINEAR + "tokenizer_sauce: union\n", RECIPE, "tokenizer_sauce"),
    recipe("merge-models-dtype-unknown", LINEAR + "dtype: float12\n", RECIPE, "dtype", "float12"),
    recipe("merge-models-model-missing",
           "merge_method: linear\nmodels:\n  - model: {tmp}/nope\n    parameters: {{weight: 1.0}}\n", "{tmp}/nope"),
    recipe("merge-models-density-above-one",
           "merge_method: ties\nbase_model: {model}\nmodels:\n  - model: {model}+{adapter}\n"
           "    parameters: {{weight: 1, density: 1.5}}\n",
           "density", "1.5"),
    recipe("merge-models-shard-size-text", LINEAR, "--max-shard-size", "lots", argv=["--max-shard-size", "lots"]),
    Cli("merge-models-latin1", ["merge-models", RECIPE, OUT], [RECIPE, "byte 26"],
        setup=write("recipe.yaml", "merge_method: linear\n# caf\xe9\n".encode("latin-1"))),
    *[Cli(f"merge-models-model-{what}", ["merge-models", RECIPE, OUT], ["{tmp}/model/" + file, *names],
          setup=broken_model(file, content))
      for what, file, content, names in (
          ("config-invalid-json", "config.json", "{", ["invalid JSON"]),
          ("config-is-list", "config.json", "[]", ["object"]),
          ("config-latin1", "config.json", '{"model_type": "caf\xe9"}'.encode("latin-1"), ["byte"]),
          ("weights-truncated", "model.safetensors", None, []),
      )],
    Cli("merge-models-into-non-empty-dir", ["merge-models", RECIPE, OUT], [OUT, "--overwrite"],
        setup=lambda env: (non_empty_out(env), env.write("recipe.yaml", env.fmt(LINEAR)))),
]


@pytest.mark.parametrize("row", table(ROWS))
def test_bad_merging_input(row, env, capsys):
    check_cli(row, env, capsys)
