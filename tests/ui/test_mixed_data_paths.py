"""The UI's path policy sees the files of a training mix and of replay (data.train as a list of sources)."""
from lorakit.ui.forms import PathPolicy


def test_mixed_sources_and_replay_files_are_checked(tmp_path):
    policy = PathPolicy([tmp_path])
    inside = str(tmp_path / "a.jsonl")
    config = {"data": {"train": [{"file": inside}, {"file": "/etc/x.jsonl", "weight": 2}],
                       "replay": {"file": "/etc/old.jsonl", "ratio": 0.1}}}
    errors = policy.check(config)
    assert set(errors) == {"data.train.1.file", "data.replay.file"}
    assert policy.check({"data": {"train": [{"file": inside}, {"file": "bundled:orders_train"}]}}) == {}
