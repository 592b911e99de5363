"""Word-overlap scores of two texts over lower-cased word tokens: token F1 and ROUGE-L (the longest
common subsequence). The forgetting evaluator's agreement probe and the Self-Instruct novelty
filter both use them. Two empty texts agree fully (1.0), and an empty text against a non-empty one
scores 0.0."""
from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _f1(common: int, n_pred: int, n_ref: int) -> float:
    if common == 0:
        return 0.0
    precision, recall = common / n_pred, common / n_ref
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the two bags of word tokens."""
    p, r = words(prediction), words(reference)
    if not p or not r:
        return float(p == r)
    return _f1(sum((Counter(p) & Counter(r)).values()), len(p), len(r))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_words(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 of two token lists: LCS / length each way, harmonic mean."""
    if not candidate or not reference:
        return float(candidate == reference)
    return _f1(lcs_length(candidate, reference), len(candidate), len(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of two texts (see `rouge_l_words`)."""
    return rouge_l_words(words(prediction), words(reference))
