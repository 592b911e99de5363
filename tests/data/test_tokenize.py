"""Assistant-only masks (template and fallback), truncation stats, prompts and classification encoding."""
import pytest

from lorakit.data import (
    IGNORE,
    Dataset,
    build_label_map,
    encode_classification,
    encode_conversation,
    encode_dataset,
    encode_prompt,
    encode_text,
)
from lorakit.data.tokenize import end_of_turn_id, render_fallback

MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi there!"},
    {"role": "user", "content": "And the capital of France?"},
    {"role": "assistant", "content": "Paris, of course."},
]


def target_runs(labels):
    """Contiguous runs of target ids."""
    runs, cur = [], []
    for lab in labels:
        if lab == IGNORE:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(lab)
    return runs + ([cur] if cur else [])


def test_labels_are_exactly_the_assistant_replies_plus_end_of_turn(tokenizer):
    ids, labels, truncated = encode_conversation(tokenizer, MULTI, max_length=512)
    assert not truncated and len(ids) == len(labels)
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    eot = tokenizer.decode([end_of_turn_id(tokenizer)])
    runs = target_runs(labels)
    assert [tokenizer.decode(r) for r in runs] == ["Hi there!" + eot, "Paris, of course." + eot]
    n_target = sum(len(r) for r in runs)
    assert sum(lab == IGNORE for lab in labels) == len(ids) - n_target


def test_template_renders_the_tokenizer_chat_template(smol_tokenizer):
    ids, _, _ = encode_conversation(smol_tokenizer, MULTI, 512)
    assert smol_tokenizer.decode(ids) == smol_tokenizer.apply_chat_template(MULTI, tokenize=False)


def test_fallback_is_chatml(plain_tokenizer):
    ids, _, _ = encode_conversation(plain_tokenizer, MULTI, 512)
    text = plain_tokenizer.decode(ids)
    assert text == render_fallback(plain_tokenizer, MULTI)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_truncation_flag_and_dataset_stats(tokenizer):
    ids, labels, truncated = encode_conversation(tokenizer, MULTI, max_length=10)
    assert truncated and len(ids) == len(labels) == 10
    system = {"role": "system", "content": "Be brief."}
    short = [system, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    long_reply = [system, {"role": "user", "content": "x"}, {"role": "assistant", "content": "y and more words"}]
    long_prompt = [system, {"role": "user", "content": "many words " * 20}, {"role": "assistant", "content": "y"}]
    cut = len(encode_conversation(tokenizer, short, 512)[0])
    ds = Dataset("mem", "messages", "chat", [long_prompt, short, long_reply])
    examples, stats = encode_dataset(tokenizer, ds, max_length=cut)
    assert stats.rows == 3 and stats.truncated == 2
    assert stats.dropped_no_target == 1 and stats.kept == 2 and len(examples) == 2  # long_prompt lost its reply
    assert stats.tokens == sum(len(e) for e in examples)


def test_text_rows_are_all_targets_plus_eos(tokenizer):
    ids, labels, truncated = encode_text(tokenizer, "hello world", 64)
    assert ids == labels and ids[-1] == tokenizer.eos_token_id and not truncated
    assert encode_text(tokenizer, "hello world " * 50, 16)[2]


def test_encode_prompt_adds_generation_prompt(smol_tokenizer):
    prompt, ref = encode_prompt(smol_tokenizer, MULTI)
    assert ref == "Paris, of course."
    assert smol_tokenizer.decode(prompt).endswith("And the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    full, labels, _ = encode_conversation(smol_tokenizer, MULTI, 512)
    assert full[:len(prompt)] == prompt and labels[len(prompt)] != IGNORE
    with pytest.raises(ValueError):
        encode_prompt(smol_tokenizer, MULTI[:-1])


def test_label_map_is_sorted_and_classification_encodes(smol_tokenizer):
    rows = [{"text": "refund please", "label": "billing"}, {"text": "app crash " * 40, "label": "technical"},
            {"text": "where is my parcel", "label": "shipping"}, {"text": "x", "label": "billing"}]
    label2id = build_label_map(r["label"] for r in reversed(rows))
    assert label2id == {"billing": 0, "shipping": 1, "technical": 2}
    examples, stats = encode_classification(smol_tokenizer, rows, 16, label2id)
    assert [e.label for e in examples] == [0, 2, 1, 0]
    assert stats.truncated == 1 and max(len(e) for e in examples) == 16
