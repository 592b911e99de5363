"""Export fixtures: a 400-token byte-level BPE tokenizer trained here on the bundled notes (GGUF
readers parse every token in Python, so SmolLM2's 49k vocabulary would cost ~10 s per read), a
tiny chat Llama over it whose matrices are multiples of 32 wide (q8_0 blocks), and adapters."""
import json

import pytest
import torch

from helpers import randomize_lora_b
from lorakit import LoraConfig, inject, save_adapter
from lorakit.data.bundled import path as bundled_path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def train_bpe(vocab_size: int = 400, digits: bool = False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [m["content"] for line in bundled_path("quickstart_train").read_text().splitlines()
             for m in json.loads(line)["messages"]]
    backend = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if digits else byte_level)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_bpe()


def chat_llama(tokenizer, tie: bool = True, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "tie_word_embeddings": tie, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "rope_theta": 100000.0, "initializer_range": 0.2, **overrides,
    })
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def chat_lm_dir(tmp_path_factory, bpe_tokenizer):
    """A 2-layer, hidden-64 Llama (4 heads, 2 key/value heads, tied head) with the BPE tokenizer."""
    directory = tmp_path_factory.mktemp("chat-llama")
    chat_llama(bpe_tokenizer).save_pretrained(directory)
    bpe_tokenizer.save_pretrained(directory)
    return directory


def make_adapter(base_dir, out, **lora):
    """A LoRA adapter on the model in `base_dir` with random (non-zero) B, saved to `out`."""
    from lorakit.models import load_causal_lm

    model, _ = load_causal_lm(str(base_dir))
    inject(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora}))
    randomize_lora_b(model, std=0.3)
    save_adapter(model, out, base_model_name_or_path=str(base_dir))
    return out


@pytest.fixture(scope="session")
def chat_adapter_dir(tmp_path_factory, chat_lm_dir):
    """LoRA r=4 on every linear (head included: untied heads only are exported as LoRA; see tests)."""
    return make_adapter(chat_lm_dir, tmp_path_factory.mktemp("adapter") / "adapter",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
