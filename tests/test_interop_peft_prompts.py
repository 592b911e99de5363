"""Prompt tuning, P-tuning and prefix tuning adapters: lorakit-written files load in the real peft with
equal logits (for the real tokens: peft returns n leading virtual positions too), and the reverse."""
import json
import warnings

import pytest
import torch

import lorakit
from helpers import MODEL_FACTORIES, peft_from_pretrained

peft = pytest.importorskip("peft")

CONFIGS = {  # (lorakit config, peft config), the same method and options
    "prompt": (lambda **kw: lorakit.PromptTuningConfig(num_virtual_tokens=4, **kw),
               lambda **kw: peft.PromptTuningConfig(num_virtual_tokens=4, **kw)),
    "p_tuning_lstm": (lambda **kw: lorakit.PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=8,
                                                               encoder_reparameterization_type="LSTM", **kw),
                      lambda **kw: peft.PromptEncoderConfig(num_virtual_tokens=3, encoder_hidden_size=8,
                                                            encoder_reparameterization_type="LSTM", **kw)),
    "prefix_projection": (lambda **kw: lorakit.PrefixTuningConfig(num_virtual_tokens=5, prefix_projection=True, **kw),
                          lambda **kw: peft.PrefixTuningConfig(num_virtual_tokens=5, prefix_projection=True, **kw)),
    "prefix": (lambda **kw: lorakit.PrefixTuningConfig(num_virtual_tokens=5, **kw),
               lambda **kw: peft.PrefixTuningConfig(num_virtual_tokens=5, **kw)),
}
TASKS = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS"}
CASES = ([("llama", m) for m in CONFIGS] + [("gpt2", "prompt"), ("gpt2", "prefix")]
         + [("bert", "prompt"), ("bert", "p_tuning_lstm")])


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1, 128, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, mask


def _real_token_logits(model, arch, peft_model=False):
    """Logits for the real tokens (peft's causal LMs return the virtual positions first)."""
    ids, mask = _batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    return out[:, -ids.shape[1]:] if peft_model and arch != "bert" else out


def _scramble(parameters, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("arch, method", CASES)
def test_lorakit_adapter_loads_in_peft(arch, method, tmp_path):
    model = MODEL_FACTORIES[arch]()
    lorakit.inject(model, CONFIGS[method][0](modules_to_save=["classifier"] if arch == "bert" else None))
    _scramble(model.virtual_tokens.parameters())
    if arch == "bert":
        _scramble(model.classifier.copies["default"].parameters(), seed=1)
    lorakit.save_adapter(model, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["task_type"] == TASKS[arch] and written["inference_mode"] is True
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)
    torch.testing.assert_close(_real_token_logits(theirs, arch, peft_model=True), _real_token_logits(model, arch),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, method", CASES)
def test_peft_adapter_loads_in_lorakit(arch, method, tmp_path):
    with warnings.catch_warnings(action="ignore"):
        theirs = peft.get_peft_model(MODEL_FACTORIES[arch](), CONFIGS[method][1](task_type=TASKS[arch]))
    _scramble([p for p in theirs.parameters() if p.requires_grad])
    theirs.save_pretrained(tmp_path)
    theirs = peft_from_pretrained(MODEL_FACTORIES[arch](), tmp_path)  # peft's own reading of its file
    ours = MODEL_FACTORIES[arch]()
    with warnings.catch_warnings(action="ignore"):
        lorakit.load_adapter(ours, tmp_path)
    torch.testing.assert_close(_real_token_logits(ours, arch), _real_token_logits(theirs, arch, peft_model=True),
                               atol=1e-5, rtol=1e-5)


def test_bert_prefix_matches_peft_prefix_cache(tmp_path):
    """peft 0.21 cannot run a BERT classifier with prefix tuning on transformers 5 (it looks for a
    `past_key_values` argument); its own prefix cache, passed to the encoder as peft would, is the oracle."""
    model = MODEL_FACTORIES["bert"]()
    lorakit.inject(model, lorakit.PrefixTuningConfig(num_virtual_tokens=4, modules_to_save=["classifier"]))
    _scramble(model.virtual_tokens.parameters())
    lorakit.save_adapter(model, tmp_path)
    theirs = peft_from_pretrained(MODEL_FACTORIES["bert"](), tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        cache = theirs.get_prompt(batch_size=ids.shape[0])
        out = theirs.base_model.bert(input_ids=ids, attention_mask=torch.cat([torch.ones(3, 4, dtype=mask.dtype), mask], 1),
                                     cache=cache)
        expected = theirs.base_model.classifier(out.pooler_output)
    torch.testing.assert_close(_real_token_logits(model, "bert"), expected, atol=1e-5, rtol=1e-5)


def test_loaded_p_tuning_adapter_is_its_final_tokens(tmp_path):
    """peft's file holds the encoder's output; loading (even to train further) gives a plain table of it."""
    model = MODEL_FACTORIES["llama"]()
    lorakit.inject(model, lorakit.PromptEncoderConfig(num_virtual_tokens=3))
    lorakit.save_adapter(model, tmp_path)
    again = MODEL_FACTORIES["llama"]()
    lorakit.load_adapter(again, tmp_path, is_trainable=True)
    trainable = [n for n, p in again.named_parameters() if p.requires_grad]
    assert trainable == ["virtual_tokens.adapters.default.embedding.weight"]
    torch.testing.assert_close(_real_token_logits(again, "llama"), _real_token_logits(model, "llama"))
