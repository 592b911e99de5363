"""`lorakit serve` options: checked before anything loads; the real command starts, serves and
stops gracefully on SIGTERM."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest

from lorakit.cli import main
from lorakit.errors import InputError
from lorakit.serve.launch import ServeOptions, parse_adapter_specs, plan
from serve_helpers import free_port


def test_adapter_specs_are_name_equals_dir():
    assert parse_adapter_specs(["a=x/y", "b=/z=w"]) == {"a": "x/y", "b": "/z=w"}
    for bad in (["a"], ["=x"], ["a="], ["a b=x"], ["a=x", "a=y"]):
        with pytest.raises(InputError):
            parse_adapter_specs(bad)


def test_adapters_on_different_bases_are_a_startup_error(tmp_path, adapter_root):
    other = tmp_path / "other"
    shutil.copytree(adapter_root / "b", other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "some/other"}))
    with pytest.raises(InputError, match="different base models"):
        plan(ServeOptions(adapters={"a": str(adapter_root / "a"), "o": str(other)}))
    assert plan(ServeOptions(adapters={"a": str(adapter_root / "a")})).base == \
        json.loads((adapter_root / "a" / "adapter_config.json").read_text())["base_model_name_or_path"]


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "nodir"], "expected NAME=DIR"),
    (["--adapter", "a=/no/such/dir"], "not an adapter directory"),
    (["--adapter-dir", "/no/such/dir"], "--adapter-dir /no/such/dir: not a directory"),
    (["--max-batch", "0"], "expected a positive integer"),
    (["--port", "70000"], "expected a port number"),
    (["--quantization", "nf3"], "invalid choice"),
])
def test_bad_options_are_one_line_and_exit_2(capsys, argv, message):
    try:
        code = main(["serve", *argv])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "Traceback" not in err


def test_the_command_serves_and_drains_on_sigterm(serve_base_dir, adapter_root):
    """`python -m lorakit serve` prints its ready line; SIGTERM during a streamed request lets it finish."""
    sock = free_port()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", "--model", str(serve_base_dir), "--adapter",
                             f"a={adapter_root / 'a'}", "--port", str(port), "--max-model-len", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "ready at" in line:
                break
        assert any(f"http://127.0.0.1:{port}/v1" in line for line in lines), lines
        assert any("models" in line and "a" in line for line in lines)
        body = json.dumps({"model": "a", "prompt": "Once", "max_tokens": 40, "temperature": 0, "stream": True})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        events = []
        with urllib.request.urlopen(request, timeout=60) as response:
            events.append(response.readline())  # the first event is out: the request is running
            threading.Timer(0.0, proc.send_signal, [signal.SIGTERM]).start()
            events += response.read().splitlines()
        data = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")]
        assert events[-2:] == [b"data: [DONE]", b""] or events[-1] == b"data: [DONE]"
        assert data[-1]["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=60) == 0
        assert "lorakit serve: stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
