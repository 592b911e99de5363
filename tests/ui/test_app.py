"""The dashboard's JSON API against a live server (urllib): runs, metrics by offset, comparisons,
the run form's validation, launching, and the safety rules (keys, Host header, paths)."""
import json
import urllib.error
import urllib.request

import pytest

from conftest import RUN_STEPS


def request(url, path, body=None, headers=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} if body is not None else {}
    h.update(headers or {})
    req = urllib.request.Request(url + path, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_runs_table_lists_every_run_with_status_steps_and_final_metrics(ui_server):
    status, body = request(ui_server, "/ui/api/runs")
    assert status == 200
    runs = {r["id"]: r for r in body["runs"]}
    assert set(runs) == {"alpha", "beta", "live", "broken"}
    alpha = runs["alpha"]
    assert alpha["status"] == "finished" and alpha["step"] == RUN_STEPS == alpha["total_steps"]
    assert alpha["method"] == "lora" and alpha["has_adapter"]
    assert alpha["final"]["train_loss"] > 0 and alpha["final"]["eval_loss"] > 0
    assert runs["live"]["status"] == "running" and runs["live"]["step"] == 3
    assert runs["broken"]["status"] == "failed"
    assert runs["broken"]["error"] == "data.train: file not found: missing.jsonl"


def test_metrics_are_read_from_an_offset(ui_server, ui_root):
    _, first = request(ui_server, "/ui/api/metrics?id=live")
    assert [r["step"] for r in first["rows"]] == [1, 2, 3]
    with open(ui_root / "runs" / "live" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": 4, "loss": 0.7}) + "\n")
        f.write('{"split": "train", "step": 5, "lo')  # a row being written: not returned yet
    _, more = request(ui_server, f"/ui/api/metrics?id=live&offset={first['offset']}")
    assert [r["step"] for r in more["rows"]] == [4] and not more["reset"]
    _, again = request(ui_server, f"/ui/api/metrics?id=live&offset={more['offset'] + 10_000}")
    assert again["reset"] and [r["step"] for r in again["rows"]] == [1, 2, 3, 4]


def test_run_detail_has_config_adapters_and_checkpoints(ui_server):
    status, run = request(ui_server, "/ui/api/run?id=beta")
    assert status == 200 and run["config"]["lora"]["r"] == 8
    ids = [a["id"] for a in run["adapters"]]
    assert ids[0] == "beta" and any(i.startswith("beta@step-") for i in ids)
    assert not run["can_stop"]


def test_compare_lists_only_the_differing_keys(ui_server):
    status, diff = request(ui_server, "/ui/api/compare?id=alpha&id=beta")
    assert status == 200
    keys = {d["key"]: d["values"] for d in diff["differ"]}
    assert keys["lora.r"] == {"alpha": 4, "beta": 8}
    assert keys["train.lr"] == {"alpha": 0.02, "beta": 0.05}
    assert "train.steps" not in keys and diff["same"] > 20


@pytest.mark.parametrize("path", ["/ui/api/run?id=../data", "/ui/api/run?id=%2Fetc", "/ui/api/run?id=nope",
                                  "/ui/api/metrics?id=alpha/checkpoints", "/ui/api/run?id=.hidden"])
def test_run_ids_outside_the_runs_directory_are_not_found(ui_server, path):
    status, body = request(ui_server, path)
    assert status == 404 and "no run" in body["error"]["message"]


def test_validation_reports_each_bad_field_beside_its_key(ui_server, ui_root):
    values = {"data.train": str(ui_root / "data" / "train.jsonl"), "lora.r": "-1", "train.lr": "fast",
              "train.steps": "[1", "model.name": "/etc/hostname"}
    status, report = request(ui_server, "/ui/api/validate", {"name": "ok-name", "values": values})
    assert status == 200 and not report["ok"]
    errors = report["errors"]
    assert errors["lora.r"] == "Input should be greater than 0"
    assert "valid number" in errors["train.lr"]
    assert errors["train.steps"].startswith("not valid YAML")
    assert "outside the directories" in errors["model.name"]
    status, report = request(ui_server, "/ui/api/validate", {"name": "../x", "values": {}})
    assert "name" in report["errors"] and "data.train" in report["errors"]


def test_launch_refuses_bad_data_and_existing_names_before_starting(ui_server, ui_root, tmp_path):
    bad = ui_root / "data" / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"nope": 1}\n')
    values = {"data.train": str(bad), "model.name": str(ui_root / "data" / "tiny-base")}
    status, body = request(ui_server, "/ui/api/launch", {"name": "never", "values": values})
    assert status == 400 and "bad.jsonl" in body["errors"]["data.train"]
    status, body = request(ui_server, "/ui/api/launch", {"name": "alpha", "values": values})
    assert status == 400 and "exists" in body["errors"]["name"]
    assert not (ui_root / "runs" / "never").exists()


def test_sources_and_prefill_from_a_config_and_a_data_file(ui_server, ui_root):
    _, sources = request(ui_server, "/ui/api/sources")
    assert sources["configs"] == ["tiny.yaml"]
    assert str(ui_root / "data" / "train.jsonl") in sources["data"]
    assert "bundled:quickstart_train" in sources["bundled"]
    _, filled = request(ui_server, "/ui/api/source?config=tiny.yaml")
    assert filled["name"] == "tiny" and filled["values"]["lora.r"] == "4" and "output_dir" not in filled["values"]
    status, _ = request(ui_server, "/ui/api/source?config=../runs/alpha/config.yaml")
    assert status == 404
    status, body = request(ui_server, "/ui/api/source?data=/etc/passwd")
    assert status == 400 and "outside" in body["error"]["message"]


def test_host_header_other_than_loopback_is_refused(ui_server):
    status, body = request(ui_server, "/ui/api/runs", headers={"Host": "evil.example:80"})
    assert status == 403 and "Host" in body["error"]["message"]


def test_playground_routes_wait_for_a_model(ui_server):
    status, backend = request(ui_server, "/ui/api/backend")
    assert status == 200 and backend["switchable"]
    assert any(c.endswith("tiny-base") for c in backend["candidates"])
    status, body = request(ui_server, "/ui/api/backend", {"base": "/etc"})
    assert status == 400 and "not one of" in body["error"]["message"]


def test_api_key_is_required_when_set(ui_root):
    from serve.serve_helpers import running
    from lorakit.ui.launch import UiOptions, build_ui_app

    app = build_ui_app(UiOptions(runs=str(ui_root / "runs"), data=[str(ui_root / "data")], api_key="s3cret"))
    with running(app) as url:
        assert request(url, "/ui/api/runs")[0] == 401
        assert request(url, "/ui/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = request(url, "/ui/api/runs", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and body["runs"]
        with urllib.request.urlopen(url + "/ui/", timeout=30) as page:  # the page itself holds no data
            assert page.status == 200 and b"lorakit" in page.read()


def test_stop_and_resume_refuse_runs_they_cannot_act_on(ui_server):
    status, body = request(ui_server, "/ui/api/stop", {"id": "alpha"})
    assert status == 400 and "not running from this dashboard" in body["error"]["message"]
    status, body = request(ui_server, "/ui/api/resume", {"id": "live"})
    assert status == 400 and "no checkpoint to resume from" in body["error"]["message"]
    status, body = request(ui_server, "/ui/api/stop", {"id": "../etc"})
    assert status == 404
