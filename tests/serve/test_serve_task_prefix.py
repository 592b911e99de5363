"""The server applies an adapter's recorded task prefix when a request names the task (`task`, a lorakit
field that OpenAI clients send through `extra_body`)."""
import json
import shutil

import pytest

from serve_helpers import running

openai = pytest.importorskip("openai")

PROMPT = "Lunch with Ana on Friday at noon."


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory, adapter_root):
    """Adapter `a` copied with a task_prefixes.json of two tasks."""
    path = shutil.copytree(adapter_root / "a", tmp_path_factory.mktemp("mt") / "mt")
    (path / "task_prefixes.json").write_text(json.dumps({"tasks": {"notes": "[notes] ", "plain": ""}}))
    return path


@pytest.fixture(scope="module")
def url(serve_base_dir, prefixed):
    from lorakit.serve.launch import ServeOptions, build_app

    app = build_app(ServeOptions(model=str(serve_base_dir), adapters={"mt": str(prefixed)}, max_batch=4,
                                 max_model_len=256))
    with running(app) as url:
        yield url


def test_requests_naming_a_task_get_its_prefix(url, prefixed, serve_base_dir):
    from lorakit.inference import generate, load_trained

    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    trained = load_trained(prefixed)
    chat = lambda **kw: c.chat.completions.create(  # noqa: E731
        model="mt", messages=[{"role": "user", "content": PROMPT}], max_tokens=10, temperature=0, **kw)
    assert chat(extra_body={"task": "notes"}).choices[0].message.content.strip() == \
        generate(trained, "[notes] " + PROMPT, max_new_tokens=10)
    assert chat().choices[0].message.content.strip() == generate(trained, PROMPT, max_new_tokens=10)
    complete = lambda prompt, **kw: c.completions.create(  # noqa: E731
        model="mt", prompt=prompt, max_tokens=8, temperature=0, **kw).choices[0].text
    assert complete(PROMPT, extra_body={"task": "notes"}) == complete("[notes] " + PROMPT)
    listed = {m.id: m for m in c.models.list().data}
    assert listed["mt"].model_extra["task_prefixes"] == ["notes", "plain"]

    with pytest.raises(openai.BadRequestError, match="task 'nope' is not one 'mt' was trained with"):
        chat(extra_body={"task": "nope"})
    with pytest.raises(openai.BadRequestError, match="records no task prefixes"):
        c.chat.completions.create(model=str(serve_base_dir), messages=[{"role": "user", "content": PROMPT}],
                                  max_tokens=2, extra_body={"task": "notes"})
