"""Compressed model directories (int8, structurally pruned) are served like any model: the server's
greedy answer equals `lorakit generate` on the same directory."""
import pytest

from lorakit.compress import compress_int8, prune_to_dir
from lorakit.inference import generate, load_trained
from lorakit.serve.launch import ServeOptions, build_app
from serve_helpers import running

openai = pytest.importorskip("openai")


@pytest.mark.parametrize("kind", ["int8", "structured"])
def test_a_compressed_dir_serves_what_generate_answers(serve_base_dir, tmp_path, kind):
    out = tmp_path / kind
    if kind == "int8":
        compress_int8(str(serve_base_dir), out, kernel="fbgemm")
    else:
        prune_to_dir(str(serve_base_dir), out, method="structured", sparsity=0.5, heads=0.5)
    prompt = "Dinner with Priya on Friday at 7pm."
    expected = generate(load_trained(str(out)), prompt, max_new_tokens=8)
    with running(build_app(ServeOptions(model=str(out)))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(model=str(out), messages=[{"role": "user", "content": prompt}],
                                               max_tokens=8, temperature=0)
    assert reply.choices[0].message.content.strip() == expected
