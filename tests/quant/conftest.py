"""Fixtures for the quantization tests: bitsandbytes' NF4 on CPU as the oracle."""
import warnings

import pytest
import torch


@pytest.fixture(scope="session")
def bnb_nf4():
    """weight, double_quant -> bitsandbytes' dequantize_4bit(quantize_4bit(weight)), NF4, blocksize 64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        functional = pytest.importorskip("bitsandbytes.functional")

    def roundtrip(weight: torch.Tensor, double_quant: bool) -> torch.Tensor:
        packed, state = functional.quantize_4bit(
            weight, blocksize=64, quant_type="nf4", compress_statistics=double_quant
        )
        return functional.dequantize_4bit(packed, state)

    roundtrip.codebook = functional.get_4bit_type("nf4", device="cpu")
    return roundtrip
