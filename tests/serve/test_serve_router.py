"""`lorakit serve --router DIR`: the router's task adapters are served, and `model: "auto"` is routed
per request (before batching) to the adapter the router picks; the reply equals that adapter's."""
import pytest

from serve_helpers import running

openai = pytest.importorskip("openai")

PROMPTS = {"a": ["Lunch with Ana on Friday at noon.", "Dinner with Priya on Monday at 7pm."],
           "b": ["555 201 3344", "212 555 0199"]}


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory, adapter_root, tiny_encoder_dir):
    from lorakit import TaskRouter
    from lorakit.task_router import TaskSpec

    out = tmp_path_factory.mktemp("router") / "router"
    TaskRouter(str(tiny_encoder_dir)).fit({n: TaskSpec(str(adapter_root / n)) for n in PROMPTS}, prompts=PROMPTS).save(out)
    return out


def test_auto_is_routed_per_request_to_the_task_adapter(router_dir, serve_base_dir, reference):
    from lorakit.serve.launch import ServeOptions, build_app

    app = build_app(ServeOptions(model=str(serve_base_dir), router=str(router_dir), max_batch=4, max_model_len=256))
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        listed = {m.id for m in client.models.list().data}
        assert {"a", "b", "auto"} <= listed
        for task, prompts in PROMPTS.items():
            for prompt in prompts:
                out = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=6, temperature=0)
                assert out.model == task
                assert out.choices[0].message.content.strip() == reference(task, prompt, 6)
        done = client.completions.create(model="auto", prompt=PROMPTS["b"][0], max_tokens=3, temperature=0)
        assert done.model == "b"


def test_auto_without_a_router_is_a_404(serve_base_dir, adapter_root):
    from lorakit.serve.launch import ServeOptions, build_app

    app = build_app(ServeOptions(model=str(serve_base_dir), adapters={"a": str(adapter_root / "a")},
                                 max_model_len=256))
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.NotFoundError, match="--router"):
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
