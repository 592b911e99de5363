"""Fixtures of the data-tool tests."""
import pytest


@pytest.fixture(scope="session")
def tiny_char_model(tmp_path_factory):
    """A tiny Llama directory with a character-level tokenizer (ChatML fallback): token counts are exact and cheap."""
    from helpers import tiny_char_lm_dir

    return tiny_char_lm_dir(tmp_path_factory.mktemp("char-lm"), ["Add and. x y long ok"])
