"""The engine without HTTP: the batch cache's row operations, streaming with stop strings, and
greedy parity with decoding alone for rows that join, leave and use different adapters."""
import contextlib
import threading
import time

import pytest
import torch

import lorakit
from helpers import randomize_lora_b, tiny_llama
from lorakit.serve.engine import Engine, Event, QueueFull, Request, SamplingParams, _held_back
from lorakit.serve.kv import BatchCache
from lorakit.serve.packed import pack_linears
from lorakit.tuners.lora import ModulesToSave


class CharTokenizer:
    """Token i is the character chr(97 + i % 26) (no special tokens); enough for the engine."""

    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def test_batch_cache_joins_selects_and_trims_rows():
    torch.manual_seed(0)
    a, b = BatchCache(), BatchCache()
    ka, kb = torch.randn(2, 2, 5, 4), torch.randn(3, 2, 3, 4)
    a.update(ka, ka + 1, 0)
    b.update(kb, kb + 1, 0)
    a.concat(b)
    keys = a.layers[0].keys
    assert keys.shape == (5, 2, 5, 4) and torch.equal(keys[:2], ka)
    assert torch.equal(keys[2:, :, 2:], kb) and not keys[2:, :, :2].any()
    new = torch.randn(5, 2, 1, 4)
    for _ in range(70):  # grows past the first capacity
        a.update(new, new, 0)
    assert a.length == 75 and torch.equal(a.layers[0].keys[:, :, -1:], new)
    a.select_rows(torch.tensor([3, 0]))
    assert torch.equal(a.layers[0].keys[1, :, :5], ka[0]) and torch.equal(a.layers[0].values[0, :, 2:5], kb[1] + 1)
    a.drop_left(2)
    assert a.length == 73 and torch.equal(a.layers[0].keys[0, :, :3], kb[1])


def test_held_back_text_waits_for_a_possible_stop_string():
    assert _held_back("hello wor", ("world",)) == 3
    assert _held_back("hello", ("xyz",)) == 0
    assert _held_back("hello", ()) == 0


def _model(kind: str):
    model = tiny_llama(vocab_size=64, hidden_size=64, intermediate_size=128, initializer_range=0.2)
    if kind == "nf4":
        lorakit.quantize(model, method="nf4")
    for name, r in (("a", 4), ("b", 8), ("c", 2)):
        lorakit.inject(model, lorakit.LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear"), adapter_name=name)
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"]),
                   adapter_name="dora")
    lorakit.inject(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj"],
                                             modules_to_save=["model.norm"]), adapter_name="saved")
    randomize_lora_b(model, std=0.5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ModulesToSave):
                m.copies["saved"].weight.mul_(2.0)
    lorakit.inject(model, lorakit.VeraConfig(r=8, target_modules=["q_proj", "o_proj"], init_weights=False),
                   adapter_name="vera")
    return model.eval()


def _greedy_alone(model, adapter, prompt, max_tokens, stop):
    """The oracle: greedy decoding of one sequence with no cache and no padding (full forward per token)."""
    ids = list(prompt)
    context = lorakit.disable_adapters(model) if adapter is None else contextlib.nullcontext()
    if adapter is not None:
        lorakit.set_adapter(model, adapter)
    with torch.no_grad(), context:
        while len(ids) - len(prompt) < max_tokens:
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == stop:
                break
    return ids[len(prompt):]


class Collector:
    def __init__(self, n):
        self.events = [[] for _ in range(n)]
        self.left, self.done = n, threading.Event()

    def sink(self, i):
        def put(event: Event):
            self.events[i].append(event)
            if event.finish_reason:
                self.left -= 1
                if not self.left:
                    self.done.set()
        return put


@pytest.mark.parametrize("kind", ["fp32", "nf4", "fp32-packed"])
def test_rows_joining_a_busy_mixed_batch_decode_as_if_alone(kind):
    """18 requests over plain LoRA adapters, the base, DoRA, VeRA and modules_to_save, arriving while others
    run, with different prompt lengths and limits: each one's tokens equal greedy decoding alone (the
    oracle always with plain linear weights; `fp32-packed` serves with prepacked ones)."""
    model = _model(kind.removesuffix("-packed"))
    g = torch.Generator().manual_seed(1)
    names = [None, "a", "b", "c", "dora", "saved", "vera"]
    stop = 7
    jobs = [(names[i % 7], torch.randint(8, 64, (3 + 5 * (i % 4),), generator=g).tolist(), 6 + 4 * (i % 3))
            for i in range(18)]
    expected = [_greedy_alone(model, *job, stop) for job in jobs]
    if kind.endswith("-packed"):
        assert pack_linears(model) > 0
    engine = Engine(model, CharTokenizer(), max_batch=8, max_model_len=128).start()
    got = Collector(len(jobs))
    tokens = [None] * len(jobs)
    for i, (adapter, prompt, max_tokens) in enumerate(jobs):
        request = Request(prompt, adapter, SamplingParams(max_tokens), frozenset({stop}), got.sink(i))
        tokens[i] = request
        engine.submit(request)
        if i % 5 == 4:
            time.sleep(0.05)  # later requests join a batch that is already decoding
    assert got.done.wait(120)
    engine.shutdown(5)
    assert [r.generated[:len(e)] for r, e in zip(tokens, expected)] == expected
    for events, want in zip(got.events, expected):
        reason = events[-1].finish_reason
        text = "".join(e.text for e in events)
        ids = want[:-1] if want and want[-1] == stop else want
        assert text == CharTokenizer().decode(ids)
        assert reason == ("stop" if want and want[-1] == stop else "length")


def test_stop_strings_cut_the_reply_and_are_never_streamed():
    model = _model("fp32")
    engine = Engine(model, CharTokenizer(), max_batch=4, max_model_len=128).start()
    full = Collector(1)
    engine.submit(Request([5, 6, 7], "a", SamplingParams(20), frozenset(), full.sink(0)))
    assert full.done.wait(60)
    text = "".join(e.text for e in full.events[0])
    stop = text[5:8]
    cut = Collector(1)
    engine.submit(Request([5, 6, 7], "a", SamplingParams(20, stop=(stop,)), frozenset(), cut.sink(0)))
    assert cut.done.wait(60)
    engine.shutdown(5)
    assert "".join(e.text for e in cut.events[0]) == text[:text.index(stop)]
    assert cut.events[0][-1].finish_reason == "stop"


def test_cancelled_requests_leave_and_a_full_queue_refuses():
    model = _model("fp32")
    engine = Engine(model, CharTokenizer(), max_batch=2, max_model_len=128, max_waiting=2)
    got = Collector(3)
    requests = [Request([5, 6], "a", SamplingParams(100), frozenset(), got.sink(i)) for i in range(3)]
    engine.submit(requests[0])
    engine.submit(requests[1])
    with pytest.raises(QueueFull):
        engine.submit(requests[2])
    engine.start()
    while not requests[0].generated:
        time.sleep(0.01)
    engine.cancel(requests[0])
    engine.cancel(requests[1])
    deadline = time.monotonic() + 10
    while sum(engine.load()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.load() == (0, 0) and len(requests[0].generated) < 100
    engine.shutdown(5)


def test_a_broken_sink_does_not_stop_the_engine():
    model = _model("fp32")
    engine = Engine(model, CharTokenizer(), max_batch=4, max_model_len=128).start()

    def broken(event):
        raise RuntimeError("event loop is closed")
    engine.submit(Request([5, 6], "a", SamplingParams(50), frozenset(), broken))
    ok = Collector(1)
    engine.submit(Request([5, 6], "b", SamplingParams(5), frozenset(), ok.sink(0)))
    assert ok.done.wait(60) and ok.events[0][-1].finish_reason == "length"
    deadline = time.monotonic() + 10
    while sum(engine.load()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.load() == (0, 0)
    engine.shutdown(5)


def test_incremental_decoding_equals_a_full_decode(smol_tokenizer):
    """Streaming decodes only new tokens; across word pieces, byte tokens of multi-byte characters
    and special tokens the pieces add up to the full decode."""
    engine = Engine.__new__(Engine)
    engine.tokenizer = smol_tokenizer
    g = torch.Generator().manual_seed(0)
    text = "Café — naïve 日本語 emojis 🙂🙃 and   spaces.\n"
    ids = smol_tokenizer(text * 3)["input_ids"] + torch.randint(0, len(smol_tokenizer), (200,), generator=g).tolist()
    r = Request([], None, SamplingParams(1000), frozenset(), lambda e: None)
    for n in range(1, len(ids) + 1):
        engine._decoded(r, ids[:n], final=n == len(ids))
    assert r.text == smol_tokenizer.decode(ids, skip_special_tokens=True)


def test_virtual_token_adapters_join_running_batches_as_if_alone():
    """Prompt-tuning and prefix-tuning adapters (each its own group: their tokens sit in the cache
    before every row) next to LoRA and the base: requests joining and leaving decode as alone."""
    model = tiny_llama(vocab_size=64, hidden_size=64, intermediate_size=128, initializer_range=0.2)
    lorakit.inject(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
                   adapter_name="a")
    lorakit.inject(model, lorakit.PromptTuningConfig(num_virtual_tokens=5), adapter_name="prompt")
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=3), adapter_name="prefix")
    with torch.no_grad():
        for p in model.virtual_tokens.parameters():
            p.mul_(20)  # (so that the virtual tokens change the answers)
    model.eval()
    g = torch.Generator().manual_seed(1)
    names = [None, "a", "prompt", "prefix"]
    jobs = [(names[i % 4], torch.randint(8, 64, (3 + 5 * (i % 4),), generator=g).tolist(), 6 + 4 * (i % 3))
            for i in range(12)]
    expected = [_greedy_alone(model, *job, 7) for job in jobs]
    engine = Engine(model, CharTokenizer(), max_batch=8, max_model_len=128).start()
    got = Collector(len(jobs))
    requests = []
    for i, (adapter, prompt, max_tokens) in enumerate(jobs):
        requests.append(Request(prompt, adapter, SamplingParams(max_tokens), frozenset({7}), got.sink(i)))
        engine.submit(requests[-1])
        if i % 5 == 4:
            time.sleep(0.05)
    assert got.done.wait(120)
    engine.shutdown(5)
    assert [r.generated[:len(e)] for r, e in zip(requests, expected)] == expected
