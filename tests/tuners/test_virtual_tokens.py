"""Virtual tokens in the forward: outputs aligned with inputs, padding, the cache, generation, training,
and the rest of the adapter API (switching, disabling, deleting, refusing merges and routing)."""
import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES, logits, tiny_bert, tiny_gpt2, tiny_llama
from lorakit.errors import InputError
from lorakit.tuners.prompt import PrefixEncoder
from lorakit.tuners.virtual_tokens import VirtualTokens

METHODS = {
    "prompt": lambda: lorakit.PromptTuningConfig(num_virtual_tokens=4),
    "p_tuning_mlp": lambda: lorakit.PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=16),
    "p_tuning_lstm": lambda: lorakit.PromptEncoderConfig(num_virtual_tokens=3, encoder_reparameterization_type="LSTM"),
    "prefix": lambda: lorakit.PrefixTuningConfig(num_virtual_tokens=5),
    "prefix_projection": lambda: lorakit.PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True),
}


def _adapted(arch, method, scale=3.0):
    """A tiny model with the method's adapter, its parameters scaled so the virtual tokens matter."""
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, METHODS[method]())
    with torch.no_grad():
        for p in model.virtual_tokens.parameters():
            p.mul_(scale)
    return model


def _padded(rows, left=True, pad=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = r, 1
    return ids, mask


@pytest.mark.parametrize("method", list(METHODS))
def test_outputs_line_up_with_inputs_and_labels_give_a_loss(method, input_ids):
    model = _adapted("llama", method)
    out = model(input_ids=input_ids, labels=input_ids, output_hidden_states=True)
    assert out.logits.shape == (*input_ids.shape, 128)
    assert all(h.shape[1] == input_ids.shape[1] for h in out.hidden_states)
    assert torch.isfinite(out.loss)
    with lorakit.disable_adapters(model):
        assert not torch.allclose(logits(model, input_ids), out.logits.detach())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_of_real_tokens_equals_prepending_them(arch):
    """An independent oracle for the prefix layout (layer, key|value, head, head_dim): prefixes copied
    from the cache of a real token sequence P make the model continue as if P came first."""
    torch.manual_seed(2)
    base = MODEL_FACTORIES[arch]()
    p, text = torch.randint(0, 128, (1, 4)), torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        cache = base(input_ids=p, use_cache=True).past_key_values
        expected = base(input_ids=torch.cat([p.expand(2, -1), text], 1)).logits[:, 4:]
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=4))
    per_layer = [torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers]  # (2, heads, 4, dim) each
    table = torch.stack(per_layer).permute(3, 0, 1, 2, 4).reshape(4, -1)  # (tokens, layer·kv·head·dim)
    with torch.no_grad():
        model.virtual_tokens.adapters["default"].embedding.weight.copy_(table)
    torch.testing.assert_close(logits(model, text), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fresh_prefix_continues_as_if_vocabulary_tokens_came_first(arch):
    """The default start of a direct prefix (prefix_init SAMPLE_VOCAB): the model's own keys and values
    for n random vocabulary tokens, so a fresh adapter leaves a pretrained model working (peft's N(0, 1)
    prefixes raised SmolLM2-135M's held-out loss from 2.85 to 10.4, and 30 SFT steps then gave 0% exact
    match). Drawn with the global RNG before anything else; computed without the active prompt
    ("other"), the model's training mode left as it was."""
    base, model = MODEL_FACTORIES[arch](), MODEL_FACTORIES[arch]()
    lorakit.inject(model, lorakit.PromptTuningConfig(num_virtual_tokens=3), "other")
    model.train()
    torch.manual_seed(7)
    first = torch.randint(0, 128, (1, 4))
    torch.manual_seed(7)
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=4))
    assert model.training
    text = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        expected = base(input_ids=torch.cat([first.expand(2, -1), text], 1)).logits[:, 4:]
    lorakit.set_adapter(model, "default")
    model.eval()
    torch.testing.assert_close(logits(model, text), expected, atol=1e-4, rtol=1e-4)


def test_prefix_random_zero_and_projected_starts_are_peft_s(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=8, prefix_init="RANDOM"))
    assert 0.9 < float(model.virtual_tokens.adapters["default"]().std()) < 1.1  # nn.Embedding's N(0, 1)
    lorakit.save_adapter(model, tmp_path)
    assert "prefix_init" not in (tmp_path / "adapter_config.json").read_text()  # (trainer-only: peft has no such key)
    model = tiny_llama()
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=2, init_weights="zero"))
    assert not model.virtual_tokens.adapters["default"]().any()
    torch.manual_seed(0)
    projected = PrefixEncoder(3, 16, 2, projection_hidden=16)
    model = tiny_llama()
    torch.manual_seed(0)
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True))
    torch.testing.assert_close(model.virtual_tokens.adapters["default"].state_dict(), projected.state_dict())
    lorakit.PrefixTuningConfig(prefix_projection=True, prefix_init="RANDOM")  # (what projection does anyway)
    resolved = lorakit.PrefixTuningConfig(prefix_projection=True).model_dump()  # (a run's config.yaml) reloads
    assert lorakit.PrefixTuningConfig.model_validate(resolved).prefix_init is None
    for bad, message in ((dict(init_weights="zero", prefix_init="RANDOM"), "not used with init_weights 'zero'"),
                         (dict(prefix_projection=True, prefix_init="SAMPLE_VOCAB"), "SAMPLE_VOCAB starts a direct")):
        with pytest.raises(ValueError, match=f"prefix_init: {message}"):
            lorakit.PrefixTuningConfig(**bad)


@pytest.mark.parametrize("method", ["prompt", "p_tuning_mlp", "prefix"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_left_padded_row_equals_the_row_alone(arch, method):
    model = _adapted(arch, method)
    torch.manual_seed(4)
    rows = [torch.randint(1, 128, (7,)), torch.randint(1, 128, (4,))]
    ids, mask = _padded(rows, left=arch != "bert")  # encoders: right padding (the pooler reads position 0)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # what generate passes (the base model needs them too)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        alone = model(input_ids=rows[1][None]).logits
    if arch == "bert":
        torch.testing.assert_close(batch[1], alone[0], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(batch[1, -4:], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, method", [("llama", "prompt"), ("llama", "p_tuning_lstm"), ("llama", "prefix_projection"),
                                          ("gpt2", "prompt"), ("gpt2", "prefix")])
def test_generate_with_cache_equals_uncached_greedy(arch, method):
    """Cached, left-padded batch generation gives each row the scores of recomputing it alone, in full."""
    model = _adapted(arch, method)
    torch.manual_seed(3)
    rows = [torch.randint(1, 128, (7,)), torch.randint(1, 128, (4,))]
    ids, mask = _padded(rows)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    for i, row in enumerate(rows):
        seq = row[None]
        for step in range(5):
            with torch.no_grad():
                step_logits = model(input_ids=seq, use_cache=False).logits[0, -1]
            torch.testing.assert_close(out.logits[step][i], step_logits, atol=1e-4, rtol=1e-4)
            seq = torch.cat([seq, out.sequences[i, ids.shape[1] + step].view(1, 1)], 1)


def test_inputs_embeds_token_types_and_positional_arguments():
    model = _adapted("bert", "prompt")
    ids = torch.randint(1, 128, (2, 6))
    types = torch.zeros_like(ids)
    types[:, 3:] = 1
    with torch.no_grad():
        by_ids = model(input_ids=ids, token_type_ids=types).logits
        by_embeds = model(inputs_embeds=model.bert.embeddings.word_embeddings(ids), token_type_ids=types).logits
        hidden = model.bert(ids).last_hidden_state  # positional input_ids reach the hook too
    torch.testing.assert_close(by_embeds, by_ids)
    assert hidden.shape == (2, 6, 32)


def test_only_virtual_tokens_and_head_train_and_loss_drops():
    model = tiny_bert()
    lorakit.inject(model, lorakit.PromptEncoderConfig(num_virtual_tokens=4, modules_to_save=["classifier"]))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"virtual_tokens", "classifier"}
    torch.manual_seed(0)
    ids, labels = torch.randint(1, 128, (8, 6)), torch.randint(0, 3, (8,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.75 * losses[0]


@pytest.mark.parametrize("method", ["prompt", "p_tuning_mlp", "prefix_projection"])
def test_a_few_steps_lower_the_causal_loss(method):
    model = tiny_llama(initializer_range=0.3)  # (at 0.02 the tiny model's logits cannot move far)
    lorakit.inject(model, METHODS[method]())
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (4, 8))
    labels = torch.full_like(ids, 7)  # learnable through the virtual tokens alone
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    losses = []
    for _ in range(10):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 1.0


def test_switch_disable_and_delete_alongside_lora(input_ids):
    model = tiny_llama()
    base = logits(model, input_ids)
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False), "lora")
    lorakit.inject(model, lorakit.PromptTuningConfig(num_virtual_tokens=3), "prompt")
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=2), "prefix")
    with_prefix = logits(model, input_ids)
    lorakit.set_adapter(model, "prompt")
    with_prompt = logits(model, input_ids)
    lorakit.set_adapter(model, "lora")
    with_lora = logits(model, input_ids)
    outputs = [base, with_prefix, with_prompt, with_lora]
    assert not any(torch.allclose(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1:])
    lorakit.set_adapter(model, "prompt")
    with lorakit.disable_adapters(model):
        torch.testing.assert_close(logits(model, input_ids), base)
    torch.testing.assert_close(logits(model, input_ids), with_prompt)
    lorakit.delete_adapter(model, "prefix")
    assert list(model.virtual_tokens.adapters) == ["prompt"]
    lorakit.delete_adapter(model, "prompt")
    assert not hasattr(model, "virtual_tokens") and not model.model._forward_pre_hooks
    torch.testing.assert_close(logits(model, input_ids), with_lora)


def test_merge_refuses_virtual_tokens_and_unload_removes_them(input_ids):
    model = tiny_llama()
    base = logits(model, input_ids)
    lorakit.inject(model, lorakit.PromptTuningConfig(num_virtual_tokens=3), "prompt")
    with pytest.raises(InputError, match="adds virtual tokens: it has no weight update to merge"):
        lorakit.merge(model)
    with pytest.raises(InputError, match="no weight update to merge"):
        lorakit.merge_and_unload(model)
    plain = lorakit.unload(model)
    assert not any(isinstance(m, VirtualTokens) for m in plain.modules()) and not plain.model._forward_hooks
    torch.testing.assert_close(logits(plain, input_ids), base)


def test_prefix_refuses_gradient_checkpointing():
    model = tiny_llama()
    model.gradient_checkpointing_enable()
    with pytest.raises(InputError, match="gradient checkpointing"):
        lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=2))
    model = tiny_llama()
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=2))
    model.gradient_checkpointing_enable()
    model.train()
    with pytest.raises(InputError, match="gradient checkpointing"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long))


def test_four_dimensional_masks_are_refused():
    model = _adapted("llama", "prompt")
    mask = torch.zeros(1, 1, 4, 4)
    with pytest.raises(InputError, match="2D attention mask"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=mask)


@pytest.mark.parametrize("config, message", [
    (dict(num_virtual_tokens=128), "must be below the model's 128 positions"),
    (dict(num_virtual_tokens=4, token_dim=64), r"token_dim=64 \(model: 32\)"),
    (dict(num_virtual_tokens=4, num_layers=3), r"num_layers=3 \(model: 2\)"),
])
def test_configs_that_do_not_fit_the_model(config, message):
    with pytest.raises(InputError, match=message):
        lorakit.inject(tiny_gpt2(), lorakit.PromptTuningConfig(**config))


def test_config_values_are_checked():
    for bad in (dict(num_virtual_tokens=0), dict(num_virtual_tokens=-3), dict(num_virtual_token=4),
                dict(prompt_tuning_init="TEXT"), dict(prompt_tuning_init="WORDS"),
                dict(tokenizer_kwargs={"use_fast": True}), dict(num_transformer_submodules=2)):
        with pytest.raises(ValueError):
            lorakit.PromptTuningConfig(**bad)
    with pytest.raises(ValueError):
        lorakit.PromptEncoderConfig(encoder_reparameterization_type="GRU")
    with pytest.raises(ValueError):
        lorakit.PrefixTuningConfig(init_weights="ones")
    with pytest.raises(InputError, match="encoder_num_layers=3: only used by the LSTM"):
        lorakit.inject(tiny_llama(), lorakit.PromptEncoderConfig(num_virtual_tokens=2, encoder_num_layers=3))
    with pytest.raises(InputError, match="tokenizer_name_or_path: required"):
        lorakit.inject(tiny_llama(), lorakit.PromptTuningConfig(prompt_tuning_init="TEXT", prompt_tuning_init_text="hi"))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_route_rows_equal_each_row_alone(arch):
    """A mixed batch: prompt tuning, P-tuning, two prefixes of different lengths, LoRA and the base,
    one row each, in one forward; each row's logits equal its adapter's alone."""
    model = MODEL_FACTORIES[arch]()
    targets = {"llama": ["q_proj"], "gpt2": ["c_attn"], "bert": ["query"]}[arch]
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=targets, init_lora_weights=False), "lora")
    for name, method in (("prompt", "prompt"), ("ptune", "p_tuning_mlp"), ("prefix", "prefix"),
                         ("short", "prefix_projection")):
        lorakit.inject(model, METHODS[method](), name)
    with torch.no_grad():
        for p in model.virtual_tokens.parameters():
            p.mul_(3)
    names = ["prompt", "ptune", "prefix", "short", "lora", None]
    torch.manual_seed(5)
    rows = [torch.randint(1, 128, (n,)) for n in (6, 4, 5, 3, 6, 2)]
    ids, mask = _padded(rows, left=arch != "bert")
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad(), lorakit.route(model, names):
        mixed = model(input_ids=ids, attention_mask=mask, position_ids=None if arch == "bert" else positions).logits
    for i, (name, row) in enumerate(zip(names, rows)):
        with torch.no_grad():
            if name is None:
                with lorakit.disable_adapters(model):
                    alone = model(input_ids=row[None]).logits[0]
            else:
                lorakit.set_adapter(model, name)
                alone = model(input_ids=row[None]).logits[0]
        got = mixed[i] if arch == "bert" else mixed[i, -len(row):]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5, msg=f"row {i} ({name})")


def test_route_generates_each_row_as_alone():
    model = tiny_llama()
    lorakit.inject(model, lorakit.LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False), "lora")
    lorakit.inject(model, METHODS["prompt"](), "prompt")
    lorakit.inject(model, METHODS["prefix"](), "prefix")
    lorakit.inject(model, METHODS["p_tuning_lstm"](), "ptune")
    with torch.no_grad():
        for p in model.virtual_tokens.parameters():
            p.mul_(3)
    torch.manual_seed(6)
    rows = [torch.randint(1, 128, (n,)) for n in (5, 3, 4, 6, 2)]
    names = ["prefix", None, "prompt", "lora", "ptune"]
    ids, mask = _padded(rows)
    with lorakit.route(model, names):
        mixed = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    for i, (name, row) in enumerate(zip(names, rows)):
        if name is None:
            with lorakit.disable_adapters(model):
                alone = model.generate(input_ids=row[None], max_new_tokens=4, do_sample=False, pad_token_id=0)
        else:
            lorakit.set_adapter(model, name)
            alone = model.generate(input_ids=row[None], max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert mixed[i, ids.shape[1]:].tolist() == alone[0, len(row):].tolist(), (i, name)
