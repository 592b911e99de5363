"""lorakit.data: data files -> validated rows -> tokenised examples -> padded or packed batches.

Typical use::

    ds = load_dataset("train.jsonl")                      # format detected, every row validated
    examples, stats = encode_dataset(tokenizer, ds, max_length=512)
    loader = packed_batches(examples, max_length=512, max_tokens=4096, pad_id=tokenizer.pad_token_id, seed=0)
    for batch in loader: model(**batch)                   # loader.state_dict() / load_state_dict() to resume

The data tools (`lorakit data ...`): check_file, convert_file, split_file, dedupe_file, augment_file,
self_instruct_file.
"""
from lorakit.data.batching import (
    BatchLoader,
    ResumableBatches,
    block_causal_mask,
    collate_packed,
    collate_padded,
    grouped_batches,
    length_grouped_plan,
    packed_batches,
    packed_plan,
)
from lorakit.data.augment import AugmentMethod, augment_file
from lorakit.data.check import CheckReport, check_file
from lorakit.data.convert import ChatFormat, convert_file, split_file
from lorakit.data.dedupe import dedupe_file, find_duplicates
from lorakit.data.formats import FORMATS, Dataset, detect_format, load_dataset, normalize_records
from lorakit.data.io import DataError, data_path, read_records
from lorakit.data.self_instruct import self_instruct_file
from lorakit.data.tokenize import (
    IGNORE,
    ClassificationExample,
    EncodeStats,
    Example,
    build_label_map,
    encode_classification,
    encode_conversation,
    encode_dataset,
    encode_prompt,
    encode_text,
    render_ids,
)

__all__ = [
    "AugmentMethod", "ChatFormat", "CheckReport", "augment_file", "check_file", "convert_file", "dedupe_file",
    "find_duplicates", "self_instruct_file", "split_file",
    "BatchLoader", "ClassificationExample", "DataError", "Dataset", "EncodeStats", "Example", "FORMATS", "IGNORE",
    "ResumableBatches", "block_causal_mask", "build_label_map", "collate_packed", "collate_padded", "data_path",
    "detect_format", "encode_classification", "encode_conversation", "encode_dataset", "encode_prompt", "encode_text",
    "grouped_batches", "length_grouped_plan", "load_dataset", "normalize_records", "packed_batches", "packed_plan",
    "read_records", "render_ids",
]
