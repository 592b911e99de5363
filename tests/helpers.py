"""Test helpers shared across test modules."""
import torch

from lorakit.tuners.lora import LoraWrapper


def randomize_lora_b(model, seed: int = 0, std: float = 0.2) -> None:
    """Give every adapter a non-zero B: equivalence checks with B=0 prove nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in model.named_modules():
            if isinstance(module, LoraWrapper):
                for adapter in module.adapters.values():
                    adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g) * std)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_steps(model, ids, steps: int = 8, lr: float = 1e-2) -> list[float]:
    """`steps` AdamW steps of the causal-LM loss on `ids` over the trainable parameters; the losses."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def peft_from_pretrained(base, path):
    """`peft.PeftModel.from_pretrained(base, path)` in eval mode, peft's version warnings silenced."""
    import warnings

    import peft

    with warnings.catch_warnings(action="ignore"):
        return peft.PeftModel.from_pretrained(base, path).eval()


def tiny_llama(**overrides):
    """A 2-layer Llama (hidden 32 unless `overrides` say otherwise), seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{
        "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "tie_word_embeddings": False, **overrides,
    })
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert(num_labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, num_labels=num_labels,
    )
    return BertForSequenceClassification(cfg).eval()


MODEL_FACTORIES = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}


def tiny_llama_dir(path, tokenizer=None, tie: bool = False, vocab_size: int = 128, dtype=None):
    """Save a tiny random Llama (safetensors) and optionally a tokenizer to `path`; returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(cfg).eval()
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def save_tiny_lm(directory, tokenizer, **overrides):
    """Save a seeded random Llama over `tokenizer`'s vocabulary (1 layer, hidden 16 unless
    `overrides` say otherwise) with that tokenizer to `directory`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
        "tie_word_embeddings": True, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        **overrides,
    })
    LlamaForCausalLM(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


CHAT_MARKERS = ["<|im_start|>", "<|im_end|>"]


def char_tokenizer(texts):
    """A character-level fast tokenizer over the characters of `texts`, with <unk>, <pad>, <eos> and the
    ChatML markers (no chat template: lorakit's ChatML fallback applies). Built offline in milliseconds."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<eos>", *CHAT_MARKERS]
    chars = sorted({c for text in texts for c in text} | set("\n abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = {t: i for i, t in enumerate(specials + [c for c in chars if c not in specials])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                                   additional_special_tokens=CHAT_MARKERS)


def tiny_char_lm_dir(path, texts, **overrides):
    """`save_tiny_lm` with `char_tokenizer(texts)`: a seeded 2-layer Llama (hidden 32), no download."""
    return save_tiny_lm(path, char_tokenizer(texts), **{"hidden_size": 32, "intermediate_size": 64,
                                                        "num_hidden_layers": 2, "num_attention_heads": 4,
                                                        "num_key_value_heads": 2, **overrides})


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def train_bpe(vocab_size: int = 400, digits: bool = False):
    """A byte-level BPE tokenizer (SmolLM2's special tokens and ChatML template) trained on the bundled
    notes: GGUF readers parse every token in Python, so SmolLM2's 49k vocabulary costs ~10 s per read."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lorakit.data.bundled import path as bundled_path

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


def chat_llama(tokenizer, tie: bool = True, **overrides):
    """A 2-layer, hidden-64 Llama over `tokenizer` (4 heads, 2 key/value heads; widths multiples of 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**{
        "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
        "tie_word_embeddings": tie, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id, "rope_theta": 100000.0, "initializer_range": 0.2, **overrides,
    })
    return LlamaForCausalLM(cfg).eval()


def make_adapter(base_dir, out, **lora):
    """A LoRA adapter (default r=4 on all linears) on the model in `base_dir`, random B, saved to `out`."""
    from lorakit import LoraConfig, inject, save_adapter
    from lorakit.models import load_causal_lm

    model, _ = load_causal_lm(str(base_dir))
    inject(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora}))
    randomize_lora_b(model, std=0.3)
    save_adapter(model, out, base_model_name_or_path=str(base_dir))
    return out
