"""Error types, atomic writer, path guard and safe tensor-file reading."""

import os
import signal
import struct
import subprocess
import sys

import pytest
import torch

from hadakron.common.atomic import TEMP_PREFIX, atomic_write_bytes
from hadakron.common.errors import AdapterFileError, HadaKronError, OutputExistsError, PathOutsideRootError
from hadakron.common.paths import resolve_inside, sanitize_output_name
from hadakron.common.tensor_files import load_tensor_file, read_safetensors_header, save_tensor_file


def test_error_renders_one_line_with_path():
    err = AdapterFileError("corrupt header", path="/x/a.safetensors")
    assert str(err) == "/x/a.safetensors: corrupt header" and isinstance(err, HadaKronError)
    assert str(HadaKronError("plain").with_path("f")) == "f: plain"


def test_atomic_write_refuses_overwrite_unless_asked(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"one")
    with pytest.raises(OutputExistsError):
        atomic_write_bytes(target, b"two")
    atomic_write_bytes(target, b"two", overwrite=True)
    assert target.read_bytes() == b"two"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_published_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX modes")
    umask = os.umask(0o022)
    try:
        fresh = atomic_write_bytes(tmp_path / "fresh.bin", b"x")
        assert fresh.stat().st_mode & 0o777 == 0o644
        (tmp_path / "old.bin").write_bytes(b"old")
        os.chmod(tmp_path / "old.bin", 0o640)
        replaced = atomic_write_bytes(tmp_path / "old.bin", b"new", overwrite=True)
        assert replaced.stat().st_mode & 0o777 == 0o640 and replaced.read_bytes() == b"new"
    finally:
        os.umask(umask)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.safetensors"

    def produce(_name):
        raise RuntimeError("boom")

    from hadakron.common.tensor_files import write_safetensors_streaming

    with pytest.raises(RuntimeError):
        write_safetensors_streaming(target, [("a", torch.float32, (2,))], produce)
    assert list(tmp_path.iterdir()) == []


WRITER = """
import sys, time
from hadakron.common.atomic import atomic_open
with atomic_open(sys.argv[1], overwrite=True) as f:
    f.write(b"new" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_writer_leaves_old_file_intact(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert target.read_bytes() == b"old"


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "C:\\Windows\\x",
        "c:/x",
        "\\\\server\\share\\x",
        "//server/share",
        "a\x00b",
        "",
    ],
)
def test_path_guard_refuses_escapes(tmp_path, name):
    with pytest.raises((PathOutsideRootError, FileNotFoundError)) as info:
        resolve_inside(name, [tmp_path])
    assert info.type is PathOutsideRootError


def test_path_guard_refuses_symlink_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(b"x")
    (root / "link").symlink_to(outside)
    with pytest.raises(PathOutsideRootError):
        resolve_inside("link/secret.safetensors", [root])
    (root / "sub").mkdir()
    (root / "sub" / "ok.safetensors").write_bytes(b"x")
    assert resolve_inside("sub/ok.safetensors", [root]) == (root / "sub" / "ok.safetensors").resolve()


def test_sanitize_output_name():
    assert sanitize_output_name("loras/my:lora?") == "loras/my_lora_"
    with pytest.raises(PathOutsideRootError):
        sanitize_output_name("../escape")


def _write_header(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: p.write_bytes(b"abc"), "too short"),
        (lambda p: _write_header(p, b"{not json"), "corrupt"),
        (lambda p: p.write_bytes(struct.pack("<Q", 1 << 40) + b"{}"), "header length"),
        (lambda p: _write_header(p, b"[" * 5000 + b"]" * 5000), "corrupt|not a JSON object"),
        (
            lambda p: _write_header(p, b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8),
            "truncated",
        ),
        (lambda p: _write_header(p, b'{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4), "dtype"),
        (lambda p: _write_header(p, b'{"__metadata__":{"a":1}}'), "metadata"),
    ],
)
def test_hostile_safetensors_headers(tmp_path, make, match):
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(AdapterFileError, match=match):
        load_tensor_file(path)


def test_round_trip_and_header_only_read(tmp_path):
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4, dtype=torch.int64), "c": torch.randn(2).bfloat16()}
    path = save_tensor_file(tensors, tmp_path / "x.safetensors", {"k": "v"})
    header, meta = read_safetensors_header(path)
    assert meta == {"k": "v"} and header["a"]["shape"] == [3, 2]
    loaded, meta2 = load_tensor_file(path)
    assert meta2 == {"k": "v"}
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)


def test_unaligned_and_empty_tensors_read_back_exactly(tmp_path):
    """Offsets that are not multiples of the element size (odd fp16 counts first) and zero-size tensors."""
    from safetensors.torch import load_file

    tensors = {
        "h": torch.randn(3).half(),
        "f": torch.randn(5, 2),
        "e": torch.empty(0, 4),
        "d": torch.randn(3, dtype=torch.float64),
        "u": torch.arange(7, dtype=torch.uint8),
        "b": torch.randn(2, 3).bfloat16(),
    }
    path = save_tensor_file(tensors, tmp_path / "odd.safetensors")
    loaded, _ = load_tensor_file(path)
    reference = load_file(str(path))
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v) and torch.equal(loaded[k], reference[k])
    assert loaded["f"].data_ptr() % 4 == 0 and loaded["d"].data_ptr() % 8 == 0


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_load_weights_only(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"m.lora_up.weight": torch.ones(2, 1)}, good)
    assert torch.equal(load_tensor_file(good)[0]["m.lora_up.weight"], torch.ones(2, 1))
    evil = tmp_path / "evil.ckpt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(AdapterFileError, match="weights-only"):
        load_tensor_file(evil)


def test_streaming_write_round_trip(tmp_path):
    specs = [(f"t{i}", torch.float32, (256, 256)) for i in range(8)]
    save = __import__("hadakron.common.tensor_files", fromlist=["x"]).write_safetensors_streaming
    save(tmp_path / "s.safetensors", specs, lambda name: torch.full((256, 256), float(name[1:])))
    loaded, _ = load_tensor_file(tmp_path / "s.safetensors")
    assert float(loaded["t7"][0, 0]) == 7.0


def test_pt_files_keep_their_metadata(tmp_path):
    path = save_tensor_file({"m.lokr_w1": torch.ones(2, 2)}, tmp_path / "a.pt", {"hadakron.convention": "lycoris"})
    tensors, meta = load_tensor_file(path)
    assert meta == {"hadakron.convention": "lycoris"} and set(tensors) == {"m.lokr_w1"}


@pytest.mark.skipif(os.name != "posix", reason="PID liveness is checked on POSIX only")
def test_stale_temps_of_dead_writers_are_removed_others_kept(tmp_path):
    from hadakron.common.atomic import _host, remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f"{TEMP_PREFIX}{_host()}.{dead.pid}-abc.part",
        "alive": f"{TEMP_PREFIX}{_host()}.{os.getpid()}-abc.part",
        "other_host": f"{TEMP_PREFIX}not-{_host()}.{dead.pid}-abc.part",
        "not_a_temp": "model.safetensors",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [tmp_path / names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")
