"""The real server (uvicorn on 127.0.0.1) through the real `openai` client."""
import asyncio
import time

import pytest

import lorakit
from helpers import randomize_lora_b
from serve_helpers import running

openai = pytest.importorskip("openai")

PROMPTS = ["Dinner with Priya on Friday at 7pm.", "Lunch with Ana on Friday at noon.", "Call mom tomorrow.",
           "Gym on Monday at 6am with Lee.", "Coffee with Sam at 3pm on Sunday."]


def client(url, **kw):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def test_lists_the_base_and_every_adapter(server, serve_base_dir):
    ids = [m.id for m in client(server).models.list().data]
    assert ids == [str(serve_base_dir), "a", "b", "c", "d", "dora", "saved"]


@pytest.mark.parametrize("name", ["base", "a", "d", "dora", "saved"])
def test_chat_equals_lorakit_generate(server, serve_base_dir, reference, name):
    model = str(serve_base_dir) if name == "base" else name
    out = client(server).chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[0]}],
                                                 max_tokens=12, temperature=0)
    assert out.choices[0].message.content.strip() == reference(name, PROMPTS[0], 12)
    assert out.usage.completion_tokens <= 12 and out.usage.prompt_tokens > 5
    assert out.choices[0].finish_reason in ("stop", "length")


def test_streaming_gives_the_same_text_then_done(server):
    c = client(server)
    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = c.chat.completions.create(model="b", messages=messages, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model="b", messages=messages, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_and_stop_strings(server):
    c = client(server)
    full = c.completions.create(model="c", prompt="Once upon a time", max_tokens=16, temperature=0)
    text = full.choices[0].text
    assert full.usage.completion_tokens == 16 and full.choices[0].finish_reason == "length"
    stop = text[3:6]
    cut = c.completions.create(model="c", prompt="Once upon a time", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="c", prompt="Once upon a time", max_tokens=16, temperature=0, stop=[stop], stream=True))
    assert streamed == cut.choices[0].text


def test_seeded_sampling_repeats(server):
    c = client(server)
    kw = dict(model="a", prompt="Hello", max_tokens=10, temperature=1.0, top_p=0.9)
    first = c.completions.create(seed=7, **kw).choices[0].text
    assert c.completions.create(seed=7, **kw).choices[0].text == first
    assert len({c.completions.create(seed=s, **kw).choices[0].text for s in range(4)}) > 1


def test_sixteen_concurrent_requests_give_the_one_by_one_answers(server, serve_base_dir, reference):
    """16 requests over 4 adapters + the base at once: each reply equals the same request alone."""
    names = ["base", "a", "b", "c", "d"]
    jobs = [(names[i % 5], PROMPTS[i % len(PROMPTS)] + " " * (i // 5), 8 + 3 * (i % 4)) for i in range(16)]
    aclient = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0)

    async def one(name, prompt, max_tokens):
        model = str(serve_base_dir) if name == "base" else name
        r = await aclient.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=max_tokens, temperature=0)
        return r.choices[0].message.content.strip()

    async def all_at_once():
        return await asyncio.gather(*(one(*job) for job in jobs))
    replies = asyncio.run(all_at_once())
    assert replies == [reference(*job) for job in jobs]


def test_load_and_unload_while_serving(server, adapter_root, reference):
    c = client(server)
    c.post("/load_lora_adapter", body={"lora_name": "a2", "lora_path": "a"}, cast_to=object)
    out = c.chat.completions.create(model="a2", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=10,
                                    temperature=0)
    assert out.choices[0].message.content.strip() == reference("a", PROMPTS[2], 10)
    c.post("/unload_lora_adapter", body={"lora_name": "a2"}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="a2", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert "a2" not in [m.id for m in c.models.list().data]


def test_errors_are_openai_errors(server, adapter_root):
    c = client(server)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="n"):
        c.chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}], max_tokens=2, n=2)
    with pytest.raises(openai.BadRequestError, match="context length"):
        c.chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="tokens"):
        c.completions.create(model="a", prompt="word " * 400, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError, match="outside"):
        c.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": "../../etc"}, cast_to=object)
    (adapter_root / "broken").mkdir(exist_ok=True)
    (adapter_root / "broken" / "adapter_config.json").write_text((adapter_root / "a" / "adapter_config.json").read_text())
    (adapter_root / "broken" / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(openai.BadRequestError, match="safetensors"):
        c.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": "broken"}, cast_to=object)
    assert client(server).models.list().data  # still answering


def test_health_and_metrics(server):
    import urllib.request

    assert urllib.request.urlopen(f"{server}/health").read() == b'{"status":"ok"}'
    client(server).chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    text = urllib.request.urlopen(f"{server}/metrics").read().decode()
    for name in ("lorakit_requests_total", "lorakit_generated_tokens_total", "lorakit_waiting_requests",
                 "lorakit_batch_size_bucket", "lorakit_time_to_first_token_seconds_count",
                 "lorakit_request_latency_seconds_sum"):
        assert name in text
    assert 'lorakit_requests_total{endpoint="/v1/chat/completions",status="200"}' in text


def test_a_client_that_goes_away_frees_its_row(serve_base_dir, adapter_root):
    import http.client
    import json
    from urllib.parse import urlparse

    from lorakit.serve.launch import ServeOptions, build_app

    app = build_app(ServeOptions(model=str(serve_base_dir), adapters={"a": str(adapter_root / "a")},
                                 max_model_len=256))
    engine = app.state.engine
    with running(app) as url:
        body = {"model": "a", "prompt": "Once", "max_tokens": 200, "temperature": 0, "stream": True}
        conn = http.client.HTTPConnection(urlparse(url).hostname, urlparse(url).port, timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.readline().startswith(b"data: {")  # streaming has begun; now hang up
        conn.sock.shutdown(2)
        conn.close()
        deadline = time.monotonic() + 10
        while sum(engine.load()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.load() == (0, 0)
        assert engine.metrics.generated_tokens < 200


def test_a_full_queue_answers_429_and_an_api_key_is_required(serve_base_dir, adapter_root):
    import threading

    from lorakit.serve.launch import ServeOptions, build_app

    app = build_app(ServeOptions(model=str(serve_base_dir), adapters={"a": str(adapter_root / "a")},
                                 max_model_len=256, max_waiting=2, api_key="k"))
    with running(app) as url:
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").models.list()
        gate = threading.Event()
        app.state.engine.call(lambda model: gate.wait(30))  # the engine is busy: requests queue up
        c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)

        async def one():
            try:
                await c.completions.create(model="a", prompt="Hi", max_tokens=3, temperature=0)
                return "ok"
            except openai.RateLimitError:
                return "429"

        async def burst():
            tasks = [asyncio.create_task(one()) for _ in range(5)]
            while sum(app.state.engine.load()) < 2 or sum(t.done() for t in tasks) < 3:
                await asyncio.sleep(0.02)
            gate.set()
            return await asyncio.gather(*tasks)
        assert sorted(asyncio.run(burst())) == ["429"] * 3 + ["ok"] * 2


def test_least_recently_used_adapters_are_evicted_and_reloaded(serve_base_dir, adapter_root, reference):
    from lorakit.routing import list_adapters
    from lorakit.serve.launch import ServeOptions, build_app

    app = build_app(ServeOptions(model=str(serve_base_dir), adapters={n: str(adapter_root / n) for n in "abcd"},
                                 max_model_len=256, max_loaded_adapters=2))
    with running(app) as url:
        c = client(url)
        for name in "adba":  # b evicts a, then a evicts d
            out = c.chat.completions.create(model=name, messages=[{"role": "user", "content": PROMPTS[0]}],
                                            max_tokens=12, temperature=0)
            assert out.choices[0].message.content.strip() == reference(name, PROMPTS[0], 12)
        assert sorted(list_adapters(app.state.engine.model)) == ["a", "b"]
        assert {m.id: m.model_extra["loaded"] for m in c.models.list().data[1:]} == \
            {"a": True, "b": True, "c": False, "d": False}


def test_classification_adapters_answer_classify(tmp_path, tiny_encoder_dir):
    import json
    import urllib.request

    from lorakit.inference import classify_batch, load_trained
    from lorakit.models import load_classifier
    from lorakit.serve.launch import ServeOptions, build_app

    labels = ["billing", "bug", "praise"]
    model, _ = load_classifier(str(tiny_encoder_dir), labels)
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS",
                                             modules_to_save=["classifier"]), adapter_name="default")
    randomize_lora_b(model)
    lorakit.save_adapter(model, tmp_path / "cls")
    (tmp_path / "cls" / "labels.json").write_text(json.dumps(labels))
    app = build_app(ServeOptions(adapters={"tickets": str(tmp_path / "cls")}))
    assert app.state.engine is None
    with running(app) as url:
        assert [m.id for m in client(url).models.list().data] == ["tickets"]
        request = urllib.request.Request(f"{url}/v1/classify", data=json.dumps(
            {"model": "tickets", "input": ["my card was charged twice", "great app"]}).encode(),
            headers={"Content-Type": "application/json"})
        data = json.loads(urllib.request.urlopen(request).read())["data"]
    expected, _ = classify_batch(load_trained(tmp_path / "cls"), ["my card was charged twice", "great app"])
    assert [d["label"] for d in data] == [max(p, key=p.get) for p in expected]
    assert all(abs(d["probs"][k] - p[k]) < 1e-5 for d, p in zip(data, expected) for k in labels)
