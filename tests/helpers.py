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
