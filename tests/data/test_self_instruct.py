"""The Self-Instruct loop with an injected generator; ROUGE-L; one slow run with the embedded model."""
import json

import pytest

from lorakit.data.overlap import words
from lorakit.data.self_instruct import SeedTask, build_prompt, parse_task, reject_reason, self_instruct, self_instruct_file

SEEDS = [SeedTask("Translate 'cat' into French.", "chat"), SeedTask("Add 2 and 3.", "5"),
         SeedTask("Name the capital of Italy.", "Rome"), SeedTask("Give an antonym of hot.", "cold")]


def test_parse_and_filters():
    assert parse_task("Instruction: List two fruits.\nOutput: apple, pear") == SeedTask("List two fruits.", "apple, pear")
    assert parse_task("just text") is None
    assert parse_task("Sure! Here is one. Instructions: Add 1 and 1.\nOutput: 2\nInstruction: more") == \
        SeedTask("Add 1 and 1.", "2")
    assert parse_task("Name a fruit.\noutput: pear") == SeedTask("Name a fruit.", "pear")
    pool = [words(t.instruction) for t in SEEDS]
    assert reject_reason(SeedTask("Add 2 and 4.", "6"), pool, 0.7) == "too similar to the pool"
    assert reject_reason(SeedTask("Draw a picture of a cat.", "x"), pool, 0.7) == "needs a non-text input or output"
    assert reject_reason(SeedTask("Say it twice.", "x"), pool, 0.7) is None
    assert reject_reason(SeedTask("Hi", "x"), pool, 0.7) == "instruction length"
    assert reject_reason(SeedTask("List three prime numbers.", " "), pool, 0.7) == "empty output"


class Stub:
    """Replies from a script, recording the prompts it was given."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompts):
        self.prompts += prompts
        return [self.replies.pop(0) for _ in prompts]


def test_loop_filters_grows_the_pool_and_stops_at_n():
    stub = Stub(["Instruction: Add 2 and 3.\nOutput: 5",                    # copies a seed
                 "Instruction: List three prime numbers.\nOutput: 2, 3, 5",
                 "nonsense",
                 "Instruction: List three prime numbers please.\nOutput: 2, 3, 5",  # too close to the new one
                 "Instruction: Spell the word 'seven' backwards.\nOutput: neves",
                 "Instruction: never reached\nOutput: x"] + ["x"] * 4)
    result = self_instruct(SEEDS, 2, stub, seed=0, k=3, batch_size=2)
    assert [t.instruction for t in result.tasks] == ["List three prime numbers.", "Spell the word 'seven' backwards."]
    assert result.attempts == 6 and sum(result.rejected.values()) == 3
    assert result.rejected["unparsable"] == 1 and result.rejected["too similar to the pool"] == 2
    assert "List three prime numbers." in stub.prompts[-1]  # a generated task is shown once there is one
    assert all(p.count("\nInstruction: ") == 3 for p in stub.prompts)


def test_loop_is_deterministic_and_bounded():
    def run(seed):
        stub = Stub(["no"] * 12)
        result = self_instruct(SEEDS, 3, stub, seed=seed, max_attempts=7, batch_size=4)
        return stub.prompts, result

    (p1, r1), (p2, _), (p3, _) = run(1), run(1), run(2)
    assert p1 == p2 and p1 != p3 and r1.attempts == 7 and r1.tasks == []
    assert build_prompt(SEEDS[:1]).endswith("Instruction: Translate 'cat' into French.\nOutput: chat")


def test_file_round_trip_writes_alpaca(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t.instruction, "output": t.output}) + "\n" for t in SEEDS))
    stub = Stub(["Instruction: Count the letters in 'banana'.\nOutput: 6",
                 "Instruction: Which planet is closest to the sun?\nOutput: Mercury", "x", "x"])  # one batch of 4
    result = self_instruct_file(seeds, 2, tmp_path / "new.jsonl", generate=stub, seed=0)
    rows = [json.loads(l) for l in (tmp_path / "new.jsonl").read_text().splitlines()]
    assert len(rows) == len(result.tasks) == 2 and set(rows[0]) == {"instruction", "output"}


@pytest.mark.slow
def test_self_instruct_with_the_embedded_model(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t.instruction, "output": t.output}) + "\n" for t in SEEDS))
    result = self_instruct_file(seeds, 2, tmp_path / "new.jsonl", seed=0, max_attempts=4)
    assert result.attempts == 4 or len(result.tasks) == 2
    assert len(result.tasks) + sum(result.rejected.values()) == result.attempts
    rows = [json.loads(l) for l in (tmp_path / "new.jsonl").read_text().splitlines()]
    pool = [words(t.instruction) for t in SEEDS]
    assert all(reject_reason(SeedTask(r["instruction"], r["output"]), pool, 0.7) is None for r in rows)


def test_file_warns_when_fewer_tasks_pass_than_asked(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t.instruction, "output": t.output}) + "\n" for t in SEEDS))
    with pytest.warns(UserWarning, match="only 0 of 2 tasks passed the filters in 4 prompts"):
        result = self_instruct_file(seeds, 2, tmp_path / "new.jsonl", generate=Stub(["x"] * 4), max_attempts=4)
    assert result.tasks == [] and (tmp_path / "new.jsonl").is_file()
