"""Seeded generator for the bundled datasets; ``python -m lorakit.data.bundled.generate``.

quickstart (OpenAI ``messages`` format)
    A short calendar note -> a compact record ``activity|person|day|time``: the activity in
    lower case, the person as written, the weekday as its three-letter abbreviation and the
    time always with minutes (``7pm`` -> ``7:00pm``). E.g. ``"Dinner with Priya on Friday at
    7pm."`` -> ``"dinner|Priya|Fri|7:00pm"``. (A 24-hour clock was tried first: SmolLM2-135M
    does not learn the pm arithmetic within the quickstart's ~2-minute CPU budget.) The answer is fully determined by the note, so exact match
    is a fair metric. Notes are phrased with several templates so the model must parse, not
    copy positions. Held-out notes never share their (activity, person, day, time) with train.

classify (``text`` + string ``label``)
    Short support-ticket messages labelled ``billing`` / ``technical`` / ``account`` /
    ``shipping``, assembled from per-class openings, issues and closings. The issue phrases
    are split between train and eval, so no eval sentence appears in train.

contacts (``messages``)
    A sentence that mentions a person and a phone number -> ``Last, First: ddd-ddd-dddd``. Names
    come as "First Last" or "Last, First", numbers as ``(555) 123-4567``, ``555.123.4567``,
    ``555 123 4567`` or ``5551234567``. Held-out rows never share their (first, last) pair with train.

orders (``messages``)
    A shopping request -> ``item-color-size xQTY``: the item as a fixed slug (``T-shirts`` ->
    ``tshirt``), the colour in lower case, the size as ``S/M/L/XL`` and the quantity as digits
    (``two`` -> ``x2``). Held-out rows never share their (item, colour, size, quantity) with train.

The last two are the second and third task of the continual-learning sequence (calendar notes,
contacts, orders): the same kind of extraction with different fields, so learning one can
overwrite another.

Running the module rewrites the JSONL files next to it; the output is byte-identical for
the same seed.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 1234
SYSTEM = "Rewrite the note as activity|person|day|time."

ACTIVITIES = ["lunch", "dinner", "coffee", "meeting", "call", "tennis", "yoga", "interview", "drinks", "brunch"]
PEOPLE = [
    "Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo",
    "Maya", "Noah", "Olga", "Paul", "Priya", "Omar", "Rosa", "Sam", "Tara", "Victor", "Wendy", "Yusuf",
    "Zoe", "Liam", "Nina", "Marco", "Elena", "Tom",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TEMPLATES = [
    "{A} with {P} on {D} at {T}.",
    "On {D} at {T}: {a} with {P}.",
    "{a} with {P}, {D} {T}",
    "{P} and I have {a} on {D} at {T}.",
    "{D} {T} - {a} with {P}",
    "Remind me: {a} with {P} at {T} on {D}.",
]


def _time(rng: random.Random) -> tuple[str, str]:
    """A spoken time and its normalised form, e.g. ``("7pm", "7:00pm")``, ``("9:30am", "9:30am")``."""
    hour = rng.randint(1, 12)
    minute = rng.choice([0, 0, 15, 30, 45])
    suffix = "pm" if rng.random() < 0.5 else "am"
    spoken = f"{hour}{'' if minute == 0 else f':{minute:02d}'}{suffix}"
    return spoken, f"{hour}:{minute:02d}{suffix}"


def quickstart_rows(n_train: int = 400, n_eval: int = 60, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Return ``(train, eval)`` lists of ``{"messages": [system, user, assistant]}`` rows."""
    rng = random.Random(seed)
    seen: set[tuple[str, str, str, str]] = set()
    rows = []
    while len(rows) < n_train + n_eval:
        act, person, day = rng.choice(ACTIVITIES), rng.choice(PEOPLE), rng.choice(DAYS)
        spoken, time = _time(rng)
        key = (act, person, day, time)
        if key in seen:
            continue
        seen.add(key)
        note = rng.choice(TEMPLATES).format(A=act.capitalize(), a=act, P=person, D=day, T=spoken)
        record = f"{act}|{person}|{day[:3]}|{time}"
        rows.append({"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": note},
            {"role": "assistant", "content": record},
        ]})
    return rows[:n_train], rows[n_train:]


CLASSES = {
    "billing": {
        "open": ["Hi,", "Hello team,", "Quick question:", "Hey,", ""],
        "issues": [
            "I was charged twice for my {plan} subscription this month",
            "my invoice for {month} shows the wrong amount",
            "I need a refund for the {plan} plan I cancelled",
            "the payment for order {num} went through but I got an error",
            "why did my bill go up by {amount} dollars",
            "can I get a copy of the receipt for {month}",
            "my card was declined when renewing {plan}",
            "there is a charge of {amount} dollars I don't recognise",
            "please switch me to yearly billing on {plan}",
            "the discount code was not applied to invoice {num}",
            "I want to update the VAT number on my invoices",
            "I was billed after cancelling in {month}",
        ],
    },
    "technical": {
        "open": ["Hi,", "Help!", "Hello,", "Hey support,", ""],
        "issues": [
            "the app crashes every time I open the {feature} page",
            "I get error {num} when syncing my files",
            "the {feature} button does nothing on my phone",
            "uploads fail with a timeout since the {month} update",
            "the dashboard is stuck loading forever",
            "notifications stopped working after the last update",
            "exporting to PDF produces a blank page",
            "the {feature} screen freezes on Android",
            "search returns no results even for exact names",
            "the API returns error {num} for every request",
            "the desktop app won't start after installing version {num}",
            "images in {feature} are not displayed",
        ],
    },
    "account": {
        "open": ["Hi,", "Hello,", "Good morning,", "Hey,", ""],
        "issues": [
            "I can't log in even though my password is correct",
            "please delete my account and all my data",
            "how do I change the email address on my profile",
            "I never received the password reset email",
            "someone else may have accessed my account",
            "I want to add a second user to my team account",
            "two-factor authentication codes are not accepted",
            "please merge my two accounts into one",
            "my username was changed without my permission",
            "how can I transfer account ownership to {name}",
            "my account got locked after {num} login attempts",
            "I want to change the name on my profile to {name}",
        ],
    },
    "shipping": {
        "open": ["Hi,", "Hello,", "Hey there,", "Quick one:", ""],
        "issues": [
            "my package for order {num} has not arrived yet",
            "the tracking number for order {num} does not work",
            "the parcel arrived damaged and the box was open",
            "can I change the delivery address for order {num}",
            "my order was delivered to the wrong address",
            "it has been {days} days and my order still says processing",
            "the courier left my package with a neighbour I don't know",
            "do you ship to {country}",
            "I received only half of the items in order {num}",
            "how much is express delivery to {country}",
            "the delivery was marked complete but nothing came",
            "can I pick up order {num} instead of having it shipped",
        ],
    },
}
CLOSINGS = ["Thanks.", "Thank you!", "Please help.", "Any ideas?", "", "Cheers,", "Regards."]
FILL = {
    "plan": ["Pro", "Basic", "Team", "Premium"],
    "month": ["January", "March", "May", "July", "September", "November"],
    "num": ["4821", "1093", "77310", "502", "9914", "3387"],
    "amount": ["12", "30", "49", "99"],
    "feature": ["settings", "calendar", "reports", "gallery", "chat"],
    "name": ["Anna", "Ben", "Marco", "Priya"],
    "days": ["5", "10", "14", "21"],
    "country": ["Canada", "Germany", "Japan", "Brazil"],
}


def _fill(text: str, rng: random.Random) -> str:
    for key, options in FILL.items():
        text = text.replace("{" + key + "}", rng.choice(options))
    return text


def classify_rows(n_train: int = 600, n_eval: int = 150, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Return ``(train, eval)`` lists of ``{"text", "label"}`` rows; issue phrases are split per class."""
    rng = random.Random(seed + 1)
    labels = sorted(CLASSES)

    def make(n: int, part: int) -> list[dict]:
        out, seen = [], set()
        while len(out) < n:
            label = labels[len(out) % len(labels)]
            spec = CLASSES[label]
            issues = [s for i, s in enumerate(spec["issues"]) if (i % 4 == 3) == (part == 1)]
            issue = _fill(rng.choice(issues), rng)
            opening, closing = rng.choice(spec["open"]), rng.choice(CLOSINGS)
            if rng.random() < 0.5:
                issue = issue[0].upper() + issue[1:]
            text = " ".join(p for p in [opening, issue + rng.choice([".", "?", "!", ""]), closing] if p)
            if text in seen:
                continue
            seen.add(text)
            out.append({"text": text, "label": label})
        rng.shuffle(out)
        return out

    return make(n_train, 0), make(n_eval, 1)


CONTACT_SYSTEM = "Extract the contact as Last, First: ddd-ddd-dddd."
FIRST_NAMES = PEOPLE
LAST_NAMES = [
    "Sharma", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Brennan", "Costa",
    "Nguyen", "Fischer", "Alvarez", "Petrov", "Osei", "Larsen", "Romano", "Yilmaz", "Dubois", "Kim",
    "Walsh", "Novak", "Silva", "Becker", "Ito", "Murphy",
]
CONTACT_TEMPLATES = [
    "Call {name} at {phone}.",
    "{name}'s number is {phone}",
    "New contact: {name}, {phone}",
    "You can reach {name} on {phone}.",
    "Save {phone} for {name} please",
    "{phone} - that's {name}",
    "Text {name} tomorrow: {phone}",
]


def _phone(rng: random.Random) -> tuple[str, str]:
    """A written phone number and its normal form, e.g. ``("(555) 123-4567", "555-123-4567")``."""
    a, b, c = rng.randint(200, 989), rng.randint(100, 999), rng.randint(0, 9999)
    written = rng.choice(["({a}) {b}-{c}", "{a}.{b}.{c}", "{a} {b} {c}", "{a}{b}{c}", "{a}-{b}-{c}"])
    return written.format(a=a, b=b, c=f"{c:04d}"), f"{a}-{b}-{c:04d}"


def contacts_rows(n_train: int = 400, n_eval: int = 60, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Return ``(train, eval)`` lists of ``{"messages": [system, user, assistant]}`` rows."""
    rng = random.Random(seed + 2)
    pairs = [(f, l) for f in FIRST_NAMES for l in LAST_NAMES]
    rng.shuffle(pairs)
    held_out = set(pairs[: len(pairs) // 5])

    def make(n: int, eval_part: bool) -> list[dict]:
        rows = []
        while len(rows) < n:
            first, last = rng.choice(pairs)
            if ((first, last) in held_out) != eval_part:
                continue
            written, phone = _phone(rng)
            name = f"{last}, {first}" if rng.random() < 0.3 else f"{first} {last}"
            note = rng.choice(CONTACT_TEMPLATES).format(name=name, phone=written)
            rows.append({"messages": [
                {"role": "system", "content": CONTACT_SYSTEM},
                {"role": "user", "content": note},
                {"role": "assistant", "content": f"{last}, {first}: {phone}"},
            ]})
        return rows

    return make(n_train, False), make(n_eval, True)


ORDER_SYSTEM = "Write the order as item-color-size xQTY."
ITEMS = {  # how a request names the item -> its slug
    "T-shirts": "tshirt", "hoodies": "hoodie", "socks": "socks", "jackets": "jacket", "caps": "cap",
    "scarves": "scarf", "sweaters": "sweater", "shorts": "shorts", "gloves": "gloves", "jeans": "jeans",
}
COLORS = ["red", "blue", "black", "white", "green", "grey", "navy", "yellow", "pink", "brown"]
SIZES = {"small": "S", "medium": "M", "large": "L", "extra large": "XL", "S": "S", "M": "M", "L": "L", "XL": "XL"}
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
ORDER_TEMPLATES = [
    "I'd like {q} {c} {i} in {s}.",
    "Please send {q} {i}, {c}, size {s}.",
    "Order: {i} x{n}, colour {c}, {s}",
    "Can I get {q} {s} {c} {i}?",
    "{q} {c} {i} ({s}) please",
    "Add {n} {i} in {c}, size {s}, to my basket.",
]


def orders_rows(n_train: int = 400, n_eval: int = 60, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """Return ``(train, eval)`` lists of ``{"messages": [system, user, assistant]}`` rows."""
    rng = random.Random(seed + 3)
    seen: set[tuple[str, str, str, int]] = set()
    rows = []
    while len(rows) < n_train + n_eval:
        item, color = rng.choice(sorted(ITEMS)), rng.choice(COLORS)
        size_word = rng.choice(sorted(SIZES))
        qty = rng.randint(1, 10)
        key = (ITEMS[item], color, SIZES[size_word], qty)
        if key in seen:
            continue
        seen.add(key)
        spoken = NUMBERS[qty] if rng.random() < 0.6 else str(qty)
        note = rng.choice(ORDER_TEMPLATES).format(q=spoken, n=qty, c=color, i=item, s=size_word)
        rows.append({"messages": [
            {"role": "system", "content": ORDER_SYSTEM},
            {"role": "user", "content": note[0].upper() + note[1:]},
            {"role": "assistant", "content": f"{ITEMS[item]}-{color}-{SIZES[size_word]} x{qty}"},
        ]})
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    q_train, q_eval = quickstart_rows()
    c_train, c_eval = classify_rows()
    p_train, p_eval = contacts_rows()
    o_train, o_eval = orders_rows()
    for name, rows in [("quickstart_train", q_train), ("quickstart_eval", q_eval),
                       ("classify_train", c_train), ("classify_eval", c_eval),
                       ("contacts_train", p_train), ("contacts_eval", p_eval),
                       ("orders_train", o_train), ("orders_eval", o_eval)]:
        write_jsonl(HERE / f"{name}.jsonl", rows)
        print(f"wrote {HERE / name}.jsonl ({len(rows)} rows)")


if __name__ == "__main__":
    main()
