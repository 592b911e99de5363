"""`lorakit export ...`: writes, checks, prints the parity figures; bad input is one line and exit 2."""
import pytest

from lorakit.cli import main


def test_gguf_and_gguf_lora_commands_print_parity(chat_adapter_dir, tmp_path, capsys):
    assert main(["export", "gguf", str(chat_adapter_dir), str(tmp_path / "m.gguf"), "--type", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert "parity_max_abs_logit_diff" in out and "parity_tokenizer_equal: True" in out
    assert main(["export", "gguf-lora", str(chat_adapter_dir), str(tmp_path / "a.gguf")]) == 0
    assert "parity_max_rel_delta_diff" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["export", "gguf", "{missing}", "{tmp}/m.gguf"], "not a local model directory"),
    (["export", "gguf", "{adapter}", "{tmp}"], "is a directory; expected a file path"),
    (["export", "gguf-lora", "{tmp}", "{tmp}/a.gguf"], "not an adapter directory"),
    (["export", "onnx", "{adapter}", "{foreign}"], "pass --overwrite to replace it"),
])
def test_bad_input_is_one_line(chat_adapter_dir, tmp_path, capsys, argv, message):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    names = {"missing": str(tmp_path / "nope"), "tmp": str(tmp_path), "adapter": str(chat_adapter_dir),
             "foreign": str(foreign)}
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
