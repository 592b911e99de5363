"""Hostile and malformed requests: each gets the right 4xx with an OpenAI error body, and the server
keeps answering correctly afterwards."""
import http.client
import json
import os
from urllib.parse import urlparse

import pytest

from serve_helpers import running

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def guarded(serve_base_dir, adapter_root):
    from lorakit.serve.launch import ServeOptions, build_app

    if not (adapter_root / "escape").exists():
        os.symlink("/etc", adapter_root / "escape", target_is_directory=True)
    app = build_app(ServeOptions(model=str(serve_base_dir), adapters={"a": str(adapter_root / "a")},
                                 adapter_dir=str(adapter_root), api_key=KEY, max_batch=4, max_model_len=128))
    with running(app) as url:
        yield url, str(serve_base_dir)


def _request(url, method, path, body=b"", headers=None):
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _cases(base: str):
    """(method, path, body bytes or JSON object, headers, expected status)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    chat = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    completion = {"model": "a", "prompt": "hi", "max_tokens": 2}
    cases = []
    # malformed bodies, on every POST endpoint
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/classify", "/v1/load_lora_adapter",
                 "/v1/unload_lora_adapter"):
        for raw in (b"", b"{", b"[]", b"null", b'"text"', b"42", b'{"model": }', b"\xff\xfe\x00", b"{" * 5000,
                    b'{"model": "a", "messages": [', json.dumps([chat]).encode()):
            cases.append(("POST", path, raw, auth, 400))
    # wrong fields and types
    bad_fields = {
        "model": [1, None, [], "", {"x": 1}],
        "max_tokens": [-1, 0, "ten", 1.5, 10**12, [], "yes"],
        "temperature": [-0.1, 2.5, "hot", None, []],
        "top_p": [0, -1, 1.5, "all"],
        "n": [0, 2, 10, "one"],
        "stop": [5, [""], ["a", "b", "c", "d", "e"], [1, 2], "x" * 300],
        "seed": [-1, "x", 2**64, 1.5],
        "stream": ["maybe", [1], {"a": 1}],
        "logprobs": [True], "echo": [True], "frequency_penalty": [0.5], "best_of": [2],
    }
    for field, values in bad_fields.items():
        for value in values:
            cases.append(("POST", "/v1/chat/completions", {**chat, field: value}, auth, 400))
            cases.append(("POST", "/v1/completions", {**completion, field: value}, auth, 400))
    for messages in ("hi", [], [{"role": "user"}], [{"content": "x"}], [{"role": "robot", "content": "x"}],
                     [{"role": "user", "content": 5}], [{"role": "user", "content": [{"type": "image_url"}]}],
                     [{"role": "user", "content": "x", "extra": 1}], [None], {"role": "user"}):
        cases.append(("POST", "/v1/chat/completions", {**chat, "messages": messages}, auth, 400))
    for prompt in (None, 5, "", [], ["a", "b"], [1, 2], {"text": "x"}):
        cases.append(("POST", "/v1/completions", {**completion, "prompt": prompt}, auth, 400))
    for missing in ("model", "messages"):
        cases.append(("POST", "/v1/chat/completions", {k: v for k, v in chat.items() if k != missing}, auth, 400))
    # too long: prompt over --max-model-len, or max_tokens past the context
    cases.append(("POST", "/v1/completions", {**completion, "prompt": "word " * 500}, auth, 400))
    cases.append(("POST", "/v1/completions", {**completion, "max_tokens": 100000}, auth, 400))
    cases.append(("POST", "/v1/chat/completions", {**chat, "max_completion_tokens": 5000}, auth, 400))
    # unknown models
    for model in ("b", "gpt-4", "../a", "a ", "A", "x" * 2000, base + "/", "\u00e9\u00e8"):
        cases.append(("POST", "/v1/chat/completions", {**chat, "model": model}, auth, 404))
        cases.append(("POST", "/v1/completions", {**completion, "model": model}, auth, 404))
    cases.append(("POST", "/v1/classify", {"model": "a", "input": "x"}, auth, 404))
    cases.append(("POST", "/v1/classify", {"model": "nope", "input": ["x"]}, auth, 404))
    # runtime loading: escapes, non-adapters, bad names, duplicates
    for path in ("../a", "../../../../etc/passwd", "/etc", "/", "a/../../", "escape", "escape/ssl", "/tmp",
                 "a/../" * 30 + "../etc"):
        cases.append(("POST", "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": path}, auth, 403))
    for path in ("missing", "a/adapter_config.json", ".", "a/nothing"):
        cases.append(("POST", "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": path}, auth, 400))
    for name in ("", " a", "a b", "a" * 200, "a\n"):
        cases.append(("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": "b"}, auth, 400))
    cases.append(("POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "b"}, auth, 400))
    cases.append(("POST", "/v1/load_lora_adapter", {"lora_name": base, "lora_path": "b"}, auth, 400))
    for name in ("nope", base, "../a"):
        cases.append(("POST", "/v1/unload_lora_adapter", {"lora_name": name}, auth, 404))
    # missing or wrong key, on every /v1 route
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY},
                    {"Authorization": "Bearer " + KEY + "x"}, {"Authorization": "Bearer"}):
        cases.append(("GET", "/v1/models", b"", headers, 401))
        cases.append(("POST", "/v1/chat/completions", chat, headers, 401))
        cases.append(("POST", "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": "b"}, headers, 401))
    # wrong methods and paths, oversized bodies
    cases += [("GET", "/v1/chat/completions", b"", auth, 405), ("DELETE", "/v1/models", b"", auth, 405),
              ("GET", "/v1/nothing", b"", auth, 404), ("GET", "/admin", b"", {}, 404),
              ("POST", "/v1/completions", b"{}", {**auth, "Content-Length": str(5 * 2**20)}, 413),
              ("POST", "/v1/chat/completions", b"{}", {**auth, "Content-Length": str(2**40)}, 413)]
    return cases


def test_two_hundred_hostile_requests_get_4xx_and_the_server_survives(guarded, reference):
    url, base = guarded
    cases = _cases(base)
    assert len(cases) >= 200
    wrong = []
    for method, path, body, headers, expected in cases:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, reply = _request(url, method, path, raw, headers)
        if status != expected:
            wrong.append((method, path, raw[:80], expected, status, reply[:200]))
            continue
        error = json.loads(reply)["error"]
        assert error["message"] and error["type"] and error["code"] == expected
    assert not wrong, f"{len(wrong)} of {len(cases)} got another status: {wrong[:5]}"
    status, reply = _request(url, "POST", "/v1/chat/completions", json.dumps(
        {"model": "a", "messages": [{"role": "user", "content": "Call mom tomorrow."}], "max_tokens": 10,
         "temperature": 0}).encode(), {"Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert json.loads(reply)["choices"][0]["message"]["content"].strip() == reference("a", "Call mom tomorrow.", 10)
    assert _request(url, "GET", "/health")[0] == 200
