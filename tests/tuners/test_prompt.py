"""The virtual-token sources: peft's parameterisations (same parameters, same outputs) and initialisations."""
import pytest
import torch

import lorakit
from lorakit.tuners.prompt import PrefixEncoder, PromptEncoder, PromptTable, saved_tokens

peft = pytest.importorskip("peft")


def _peft_encoder(kind: str, **options):
    from peft.tuners.p_tuning.model import PromptEncoder as PeftPromptEncoder
    from peft.tuners.prefix_tuning.model import PrefixEncoder as PeftPrefixEncoder

    dims = dict(num_virtual_tokens=3, token_dim=8, num_layers=2, num_attention_heads=2, num_transformer_submodules=1)
    if kind == "prefix":
        return PeftPrefixEncoder(peft.PrefixTuningConfig(**dims, **options))
    return PeftPromptEncoder(peft.PromptEncoderConfig(**dims, **options))


@pytest.mark.parametrize("ours, kind, options", [
    (lambda: PromptEncoder(3, 8, 6), "p_tuning", dict(encoder_hidden_size=6)),
    (lambda: PromptEncoder(3, 8, 5, lstm=True, num_layers=2), "p_tuning",
     dict(encoder_hidden_size=5, encoder_reparameterization_type="LSTM")),
    (lambda: PrefixEncoder(3, 8, 2, projection_hidden=7), "prefix", dict(encoder_hidden_size=7, prefix_projection=True)),
    (lambda: PrefixEncoder(3, 8, 2), "prefix", dict(encoder_hidden_size=8)),
])
def test_encoders_have_peft_parameters_and_outputs(ours, kind, options):
    torch.manual_seed(0)
    theirs, mine = _peft_encoder(kind, **options), ours()
    state = theirs.state_dict()
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in state.items()}
    mine.load_state_dict(state)
    torch.testing.assert_close(mine(), theirs(torch.arange(3)[None])[0])


def test_saved_tokens_are_computed_without_dropout():
    torch.manual_seed(0)
    encoder = PromptEncoder(4, 8, 6, lstm=True, num_layers=2, dropout=0.9).train()
    first, second = saved_tokens(encoder), saved_tokens(encoder)
    torch.testing.assert_close(first, second)
    assert encoder.training and not first.requires_grad


def test_prefix_zero_init_and_table_init():
    assert not PrefixEncoder(2, 4, 3, zero_init=True)().any()
    assert not PrefixEncoder(2, 4, 3, projection_hidden=5, zero_init=True)().any()
    words = torch.randn(50, 6) * 0.05
    table = PromptTable(5, 6)
    table.init_from_tokens(words, [7, 8])
    torch.testing.assert_close(table(), words[[7, 8, 7, 8, 7]])
    table.init_random(words, torch.Generator().manual_seed(0))
    assert 0.03 < float(table().std()) < 0.07  # the vocabulary's scale, not N(0, 1)


def test_text_init_uses_the_named_tokenizer(tiny_lm_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    text = "Turn the note into a record:"
    config = lorakit.PromptTuningConfig(num_virtual_tokens=12, prompt_tuning_init="TEXT",
                                        prompt_tuning_init_text=text, tokenizer_name_or_path=str(tiny_lm_dir))
    lorakit.inject(model, config)
    ids = smol_tokenizer(text)["input_ids"]
    expected = model.get_input_embeddings().weight[(ids * 12)[:12]]
    torch.testing.assert_close(model.virtual_tokens.adapters["default"](), expected)


def test_sample_vocab_init_takes_vocabulary_rows():
    from helpers import tiny_llama

    model = tiny_llama()
    lorakit.inject(model, lorakit.PromptTuningConfig(num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB"))
    words = model.get_input_embeddings().weight
    rows = model.virtual_tokens.adapters["default"]()
    assert all(any(torch.equal(r, w) for w in words) for r in rows)
