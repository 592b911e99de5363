"""Word-overlap scores (data/overlap.py): token F1 and ROUGE-L, shared by the forgetting probe and Self-Instruct."""
import pytest

from lorakit.data.overlap import lcs_length, rouge_l, rouge_l_words, token_f1, words


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence():
    assert lcs_length("a b c d".split(), "a c d e".split()) == 3
    assert rouge_l_words("a b c d".split(), "a c d e".split()) == pytest.approx(0.75)
    assert rouge_l("The cat sat.", "the CAT sat") == 1.0
    assert rouge_l("Paris is the capital", "the capital is Paris") == pytest.approx(0.5)  # LCS "the capital"


def test_token_f1_ignores_order_and_case():
    assert token_f1("Paris is the capital", "the capital is Paris") == 1.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)


def test_empty_texts_agree_only_with_each_other():
    assert token_f1("", "") == rouge_l("", "") == rouge_l_words([], []) == 1.0
    assert token_f1("cats", "") == rouge_l("", "dogs") == rouge_l_words([], ["a"]) == 0.0
    assert rouge_l("dogs", "cats") == 0.0 and words("It's 9:30!") == ["it", "s", "9", "30"]
