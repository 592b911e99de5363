"""`lorakit ui` and `lorakit serve --ui` options (checked before anything starts, one line, exit 2),
the key rule off loopback, and the dashboard on a running server over its own model and adapters."""
import pytest

from lorakit.cli import main
from lorakit.ui.launch import access_key, is_loopback

from test_app import request


@pytest.mark.parametrize("argv, message", [
    (["ui", "--runs", "{file}"], "--runs {file}: not a directory"),
    (["ui", "--data", "/no/such/dir"], "--data /no/such/dir: not a directory"),
    (["ui", "--configs", "/no/such/dir"], "--configs /no/such/dir: not a directory"),
    (["ui", "--max-runs", "0"], "expected a positive integer"),
    (["ui", "--port", "70000"], "expected a port number"),
    (["ui", "--model", "/no/such/model"], "/no/such/model"),
    (["serve", "--runs", "runs"], "--runs, --data, --configs and --max-runs go with --ui"),
])
def test_bad_options_are_one_line_and_exit_2(capsys, tmp_path, argv, message):
    file = tmp_path / "a-file"
    file.write_text("x")
    argv = [a.replace("{file}", str(file)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message.replace("{file}", str(file)) in err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_a_key_is_required_off_loopback(monkeypatch):
    monkeypatch.delenv("LORAKIT_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert access_key("127.0.0.1", None) == (None, False)
    key, made_up = access_key("0.0.0.0", None)
    assert made_up and len(key) >= 20
    assert access_key("0.0.0.0", "given") == ("given", False)
    monkeypatch.setenv("LORAKIT_API_KEY", "from-env")
    assert access_key("0.0.0.0", None) == ("from-env", False)


def test_serve_ui_shows_the_servers_own_model_and_adapters(ui_root):
    """`lorakit serve --ui`: the dashboard on the server's app; the playground lists its adapters and
    cannot switch its base; /v1 stays the server's."""
    from lorakit.serve.launch import ServeOptions, build_app
    from lorakit.ui.launch import UiOptions, add_to_server
    from serve.serve_helpers import running

    runs = ui_root / "runs"
    app = build_app(ServeOptions(adapters={"alpha": str(runs / "alpha" / "adapter")}, max_model_len=128))
    app.state.engine.start()
    try:
        served = add_to_server(app, UiOptions(runs=str(runs), data=[str(ui_root / "data")]), loopback=True)
        with running(served) as url:
            status, listing = request(url, "/ui/api/adapters")
            assert status == 200 and [s["id"] for s in listing["served"]] == ["alpha"]
            assert listing["backend"]["state"] == "ready" and not listing["backend"]["switchable"]
            assert {a["id"] for a in listing["runs"]} >= {"alpha", "beta"}
            status, body = request(url, "/ui/api/backend", {"base": listing["backend"]["base"]})
            assert status == 400 and "fixed" in body["error"]["message"]
            status, runs_body = request(url, "/ui/api/runs")
            assert status == 200 and {r["id"] for r in runs_body["runs"]} >= {"alpha", "beta", "live"}
            status, models = request(url, "/v1/models")
            assert status == 200 and "alpha" in {m["id"] for m in models["data"]}
            assert request(url, "/ui/api/runs", headers={"Host": "evil.example"})[0] == 403
    finally:
        app.state.engine.shutdown(5)
