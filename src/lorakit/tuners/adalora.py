"""AdaLoRA (Zhang et al. 2023): SVD-form adapters P Λ Q with a pruned rank budget. NOT IMPLEMENTED YET.

`lorakit.AdaLoraConfig` (peft's field names) already validates and reads peft's ADALORA
adapter_config.json; injecting or loading such an adapter raises NotImplementedError until the
adapter (lora_A = Q (r, in), lora_E = Λ (r, 1), lora_B = P (out, r); ΔW = P(Λ⊙Q)·alpha/(ranknum+1e-5))
and the RankAllocator / `training_hooks(model)` land here.
"""
from __future__ import annotations


def build_adapters(model, config, adapter_name, wrappers) -> None:
    raise NotImplementedError("AdaLoRA adapters are not implemented yet in lorakit (AdaLoraConfig only validates)")
