"""``python -m hadakron``: flag spellings, repeated adapters, one-line errors and exit codes, inspect/merge."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from comfy_runtime import REPO_ROOT
from hadakron.cli import COMMAND_MODULES, build_parser, main
from hadakron.cli.common import CliUsageError, adapter_args
from hadakron.cli.parser import other_spelling
from test_bake import make_adapter, wan_like_state, write_model


@pytest.fixture
def files(tmp_path):
    model = write_model(tmp_path / "model.safetensors", wan_like_state(), "model.diffusion_model.", {"k": "v"})
    a, da = make_adapter(tmp_path, "a.safetensors", seed=1)
    b, db = make_adapter(tmp_path, "b.safetensors", seed=2)
    return {"model": str(model), "a": str(a), "b": str(b), "da": da, "db": db, "dir": tmp_path}


def run_main(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``main(argv)``, usage errors included."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, *needles: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hadakron: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_every_command_module_has_the_registry_interface():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"hadakron.cli.{name}")
        assert callable(module.add_parser) and callable(module.run)
    assert {"inspect", "merge"} <= set(commands)


def test_every_long_flag_of_every_command_has_both_spellings():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for option, action in list(sub._option_string_actions.items()):
            alias = other_spelling(option)
            if alias:
                assert sub._option_string_actions.get(alias) is action, (name, option)


def test_underscore_and_dash_spellings_parse_the_same(files):
    parser = build_parser()
    base = ["merge", "--model", "m", "--adapter", "a", "--out", "o"]
    dashed = parser.parse_args([*base, "--prefer-lycoris", "--blocks", "0:1"])
    underscored = parser.parse_args([*base, "--prefer_lycoris", "--blocks=0:1"])
    assert vars(dashed) == vars(underscored) and dashed.prefer_lycoris is True
    assert parser.parse_args(["inspect", "x", "--max_rows=3"]).max_rows == 3
    assert parser.parse_args(["inspect", "x", "--max-rows", "3"]).max_rows == 3


def test_repeated_adapters_take_strength_and_convention_by_position():
    parser = build_parser()
    args = parser.parse_args(
        [
            "merge",
            "--model",
            "m",
            "--out",
            "o",
            "--adapter",
            "a",
            "--strength",
            "0.5",
            "--convention",
            "peft",
            "--adapter",
            "b",
            "--adapter",
            "c",
            "--strength",
            "-2",
            "--blocks",
            "0:0",
        ]
    )
    specs = adapter_args(args)
    assert [(s.path, s.strength, s.convention, s.blocks) for s in specs] == [
        ("a", 0.5, "peft", "0:0"),
        ("b", -2.0, "auto", ""),
        ("c", 1.0, "auto", ""),
    ]
    too_many = parser.parse_args(
        ["merge", "--model", "m", "--out", "o", "--adapter", "a", "--strength", "1", "--strength", "2"]
    )
    with pytest.raises(CliUsageError, match="2 --strength values for 1"):
        adapter_args(too_many)


def test_merge_bakes_several_adapters(capsys, files):
    out = files["dir"] / "out.safetensors"
    code, stdout, err = run_main(
        capsys,
        "merge",
        "--model",
        files["model"],
        "--adapter",
        files["a"],
        "--strength",
        "0.5",
        "--adapter",
        files["b"],
        "--out",
        str(out),
    )
    assert code == 0 and err == "" and "baked 8 patches from 2 adapter(s)" in stdout
    baked, source = load_file(str(out)), load_file(files["model"])
    assert set(baked) == set(source)
    key = "model.diffusion_model.blocks.0.ffn.0.weight"
    want = source[key] + 0.5 * files["da"]["blocks.0.ffn.0"] + files["db"]["blocks.0.ffn.0"]
    torch.testing.assert_close(baked[key], want, rtol=1e-5, atol=1e-6)


def test_usage_errors_are_one_line_with_exit_2(capsys, files):
    code, _, err = run_main(capsys, "merge", "--model", files["model"], "--adapter", files["a"])
    assert code == 2
    assert_one_line(err, "--out")
    code, _, err = run_main(
        capsys,
        "merge",
        "--model",
        files["model"],
        "--adapter",
        files["a"],
        "--strength",
        "1",
        "--strength",
        "2",
        "--out",
        "x.safetensors",
    )
    assert code == 2
    assert_one_line(err, "--strength")
    code, _, err = run_main(
        capsys, "merge", "--model", files["model"], "--adapter", files["a"], "--out", files["model"], "--overwrite"
    )
    assert code == 2
    assert_one_line(err, "input model")
    code, _, err = run_main(capsys, "inspect", files["a"], "--no-such-flag")
    assert code == 2
    assert_one_line(err, "--no-such-flag")


def test_file_errors_are_one_line_naming_the_file_with_exit_1(capsys, files):
    missing = str(files["dir"] / "missing.safetensors")
    code, _, err = run_main(capsys, "inspect", missing)
    assert code == 1
    assert_one_line(err, missing)
    corrupt = files["dir"] / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    code, _, err = run_main(
        capsys,
        "merge",
        "--model",
        files["model"],
        "--adapter",
        str(corrupt),
        "--out",
        str(files["dir"] / "o.safetensors"),
    )
    assert code == 1
    assert_one_line(err, str(corrupt))
    existing = files["dir"] / "exists.safetensors"
    existing.write_bytes(b"x")
    code, _, err = run_main(capsys, "merge", "--model", files["model"], "--adapter", files["a"], "--out", str(existing))
    assert code == 1 and existing.read_bytes() == b"x"
    assert_one_line(err, str(existing), "exists")
    code, _, _ = run_main(
        capsys, "merge", "--model", files["model"], "--adapter", files["a"], "--out", str(existing), "--overwrite"
    )
    assert code == 0 and existing.stat().st_size > 1000


def test_deprecated_lycoris_flag_warns_and_prefers_lycoris(capsys, files):
    out = files["dir"] / "ly.safetensors"
    code, _, err = run_main(
        capsys, "merge", "--model", files["model"], "--adapter", files["a"], "--out", str(out), "--lycoris"
    )
    assert code == 0
    assert "warning: --lycoris is deprecated; use --prefer-lycoris" in err
    native = files["dir"] / "native.safetensors"
    assert run_main(capsys, "merge", "--model", files["model"], "--adapter", files["a"], "--out", str(native))[0] == 0
    a, b = load_file(str(out)), load_file(str(native))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_inspect_with_and_without_model(capsys, files):
    code, stdout, _ = run_main(capsys, "inspect", files["a"])
    assert code == 0 and "modules in file: 4" in stdout and "matched:" not in stdout
    assert "lora_unet_blocks_0_self_attn_q [lokr, rank 4" in stdout
    code, stdout, _ = run_main(capsys, "inspect", files["a"], "--model", files["model"])
    assert code == 0 and "matched: 4" in stdout and "lycoris_blocks_1_ffn_2 -> blocks.1.ffn.2 [lokr]" in stdout
    assert "family: adapter wan, model wan" in stdout
    code, stdout, _ = run_main(capsys, "inspect", files["a"], "--model", files["model"], "--json")
    report = json.loads(stdout)
    assert code == 0 and len(report["matched"]) == 4 and report["model_prefix"] == "model.diffusion_model."
    code, stdout, _ = run_main(capsys, "inspect", files["a"], "--json")
    assert sorted(m["algo"] for m in json.loads(stdout)["modules"]) == ["loha", "lokr", "lokr", "lora"]


def test_python_dash_m_hadakron_runs_and_fails_cleanly(files):
    out = files["dir"] / "sub.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "hadakron",
        "merge",
        "--model",
        files["model"],
        "--adapter",
        files["a"],
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    cmd = [sys.executable, "-m", "hadakron", "inspect", str(files["dir"] / "nope.safetensors")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT.parent, timeout=120)
    assert done.returncode == 1
    assert_one_line(done.stderr, "nope.safetensors")
