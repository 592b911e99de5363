"""Rule-based paraphrases of a user request: synonyms, phrase and clause order, request framing.

Every rule is ``rule(text, rng, protected) -> str | None`` (None: the rule does not apply to this
text). ``protected`` holds the case-folded words of the answer: a word the answer repeats is never
replaced, so an extraction task's answer still matches its request. Numbers, names and dates are
not in the synonym table at all. The table below was written for lorakit: instruction verbs and a
few neutral adjectives, in groups of interchangeable words.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Optional

SYNONYM_GROUPS = (  # words with one sense in requests; nouns that double as verbs ("list", "answer") are left out
    ("rewrite", "rephrase", "reword"), ("write", "compose"), ("explain", "describe"), ("give", "provide"),
    ("create", "produce"), ("summarize", "summarise", "condense"), ("convert", "transform"),
    ("identify", "find"), ("choose", "select", "pick"), ("short", "brief", "concise"), ("simple", "plain"),
    ("need", "require"), ("please", "kindly"), ("calculate", "compute"),
    ("determine", "figure out"), ("suggest", "propose", "recommend"), ("improve", "enhance"),
    ("classify", "categorize", "categorise"), ("generate", "come up with"), ("difference", "distinction"),
    ("detailed", "thorough"), ("main", "primary"), ("quick", "fast"), ("briefly", "concisely"),
    ("quickly", "rapidly"), ("discuss", "talk about"), ("benefits", "advantages"),
    ("drawbacks", "disadvantages"), ("problem", "issue"), ("method", "approach"), ("famous", "well-known"),
)
SYNONYMS: dict[str, tuple[str, ...]] = {w: tuple(x for x in g if x != w) for g in SYNONYM_GROUPS for w in g if " " not in w}

IMPERATIVES = set("""write compose rewrite rephrase reword explain describe give provide create produce make summarize
summarise condense convert transform identify find choose select pick calculate compute determine suggest propose
recommend improve enhance classify categorize categorise generate discuss list tell show name state compare solve
sort count format put turn fill add remove replace edit draft plan remind book schedule send parse read return
output predict rate rank evaluate analyze analyse tag label answer outline help check correct fix translate""".split())
OPENERS = ("please ", "kindly ", "can you ", "could you ", "would you ", "i need you to ", "i'd like you to ")
FRAMES = ("Please {core}.", "Can you {core}?", "Could you {core}?", "I need you to {core}.", "{Core}.",
          "Kindly {core}.", "I'd like you to {core}.")
WRAPPERS = ("Here is my request: {text}", "{text} Thanks.", "Task: {text}", "Input: {text}",
            "Please help with this. {text}", "{text} Thank you!")
PREPOSITIONS = {"at", "on", "in", "by", "before", "after", "during", "around"}
SUBORDINATORS = ("if", "when", "because", "after", "before", "while", "since", "unless", "once")
COMMON_STARTS = IMPERATIVES | {"the", "a", "an", "this", "that", "it", "there", "we", "you", "my", "your", "our",
                               "what", "which", "how", "why", "who", "where", "bring", "take", "call", "meet",
                               "buy", "get", "go", "keep", "let", "use", "try", "ask", "do", "be", "pay", "wear"}
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_END = re.compile(r"([.!?]*)\s*$")

Rule = Callable[[str, random.Random, set], Optional[str]]


def _match_case(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


def synonyms(text: str, rng: random.Random, protected: set) -> Optional[str]:
    """Each replaceable word is swapped for a synonym with probability 1/2 (at least one is)."""
    spots = [m for m in _WORD.finditer(text) if m.group().lower() in SYNONYMS and m.group().lower() not in protected]
    if not spots:
        return None
    chosen = [m for m in spots if rng.random() < 0.5] or [rng.choice(spots)]
    out, last = [], 0
    for m in chosen:
        out += [text[last:m.start()], _match_case(rng.choice(SYNONYMS[m.group().lower()]), m.group())]
        last = m.end()
    return "".join(out) + text[last:]


def swap_phrases(text: str, rng: random.Random, protected: set) -> Optional[str]:
    """The last two prepositional phrases of the text trade places: '... on Sunday at 6pm.' -> '... at 6pm on Sunday.'
    Both phrases are 2-4 words, the second ends the text, and no comma or clause mark lies between."""
    end = _END.search(text)
    body, punct = text[:end.start()], end.group(1)
    tail_start = max(body.rfind(c) for c in ",;:") + 1
    words = body[tail_start:].split(" ")
    marks = [i for i, w in enumerate(words) if w.lower() in PREPOSITIONS and i > 0]
    if len(marks) < 2:
        return None
    p1, p2 = marks[-2], marks[-1]
    first, second = words[p1:p2], words[p2:]
    if not (2 <= len(first) <= 4 and 2 <= len(second) <= 4):
        return None
    return body[:tail_start] + " ".join(words[:p1] + second + first) + punct


def swap_clauses(text: str, rng: random.Random, protected: set) -> Optional[str]:
    """'If X, do Y.' <-> 'Do Y if X.' for one sentence with a subordinate clause (if, when, because, ...)."""
    if len(re.findall(r"[.!?](\s|$)", text.strip())) > 1:
        return None  # one sentence only
    end = _END.search(text)
    body, punct = text[:end.start()].strip(), end.group(1) or "."
    lead = re.match(rf"^({'|'.join(SUBORDINATORS)})\s+([^,]+),\s+(.+)$", body, re.IGNORECASE)
    if lead:
        sub, cond, main = lead.groups()
        return f"{_capitalize(main)} {sub.lower()} {cond}{punct}"
    trail = re.match(rf"^([^,]+?)\s+({'|'.join(SUBORDINATORS)})\s+([^,]+)$", body, re.IGNORECASE)
    if trail and len(trail.group(1).split()) >= 2 and len(trail.group(3).split()) >= 2:
        main, sub, cond = trail.groups()
        return f"{sub.capitalize()} {cond}, {_decapitalize(main)}{punct}"
    return None


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _decapitalize(text: str) -> str:
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first.lower() in COMMON_STARTS and not first.isupper() else text


def reframe(text: str, rng: random.Random, protected: set) -> Optional[str]:
    """A request's framing reworded ('Please list ...' -> 'Could you list ...?'), or a neutral wrapper around a text
    that is not an imperative ('Task: ...')."""
    stripped = text.strip()
    lower = stripped.lower()
    opener = next((o for o in OPENERS if lower.startswith(o)), "")
    core = stripped[len(opener):]
    core = core[:-1] if core.endswith((".", "?", "!")) else core
    first = core.split(" ", 1)[0].lower() if core else ""
    if first in IMPERATIVES and not re.search(r"[\n:;]|[.!?]\s", core):
        current = (opener + "{core}").strip()
        options = [f for f in FRAMES if not f.lower().startswith(current[:6].lower())] or list(FRAMES)
        frame = rng.choice(options)
        return frame.format(core=_decapitalize(core), Core=_capitalize(core))
    return rng.choice(WRAPPERS).format(text=stripped)


ORDER_RULES: tuple[Rule, ...] = (swap_clauses, swap_phrases)
RULES: tuple[Rule, ...] = (*ORDER_RULES, synonyms, reframe)


def protected_words(answer: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", answer)}


def paraphrase(text: str, rng: random.Random, protected: set) -> str:
    """One variant: a random non-empty subset of the applicable rules, applied in the order of RULES."""
    applicable = [r for r in RULES if r(text, random.Random(0), protected) is not None]
    if not applicable:
        return text
    chosen = [r for r in applicable if rng.random() < 0.5] or [rng.choice(applicable)]
    for rule in chosen:
        text = rule(text, rng, protected) or text
    return text
