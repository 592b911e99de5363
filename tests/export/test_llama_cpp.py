"""llama.cpp itself as the oracle (through llama-cpp-python, when it is installed: it compiles llama.cpp,
about two hours on 2 cores, so it is not in the test extras). The GGUF model, and the base GGUF plus
the LoRA GGUF, must give llama.cpp the logits PyTorch gives for the merged model, and llama.cpp must
tokenize like the tokenizer the model was trained with. llama.cpp's CPU kernels round some
intermediate results (measured: max |Δlogit| ≈ 1e-3 of the logit scale with f32 weights)."""
import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from lorakit.export import export_gguf, export_gguf_lora  # noqa: E402
from lorakit.inference import load_merged  # noqa: E402


def llama_logits(model_path, ids, lora_path=None):
    llm = llama_cpp.Llama(model_path=str(model_path), lora_path=None if lora_path is None else str(lora_path),
                          n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)]), llm


@pytest.fixture(scope="module")
def exported(chat_adapter_dir, chat_lm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-cpp")
    export_gguf(str(chat_adapter_dir), out / "merged.gguf", check=False)
    export_gguf(str(chat_lm_dir), out / "base.gguf", check=False)
    export_gguf_lora(chat_adapter_dir, out / "lora.gguf", check=False)
    return out


def test_llama_cpp_runs_the_merged_model_and_base_plus_lora(exported, chat_adapter_dir):
    merged = load_merged(str(chat_adapter_dir))
    ids = merged.tokenizer("Dinner with Priya on Friday at 7pm.")["input_ids"]
    with torch.no_grad():
        reference = merged.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    got, llm = llama_logits(exported / "merged.gguf", ids)
    assert np.abs(got - reference).max() < 3e-3 * np.abs(reference).max()
    assert llm.tokenize(b"Dinner with Priya on Friday at 7pm.", add_bos=False) == ids
    with_lora, _ = llama_logits(exported / "base.gguf", ids, exported / "lora.gguf")
    assert np.abs(with_lora - reference).max() < 3e-3 * np.abs(reference).max()
