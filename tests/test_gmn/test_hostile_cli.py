"""Every subcommand's options, the zoo's catalogue and cache, and every output under hostile or
careless use: a bad option is one line and exit 2 before any work; an output is never replaced
without --force and never half-written; the cache never serves old weights, is never read
from outside the zoo and never trains on NaN; an import is all or nothing.

Each test tallies its outcomes in ``OUTCOMES`` (printed at the end of the module with ``-s``)."""

from __future__ import annotations

import csv
import errno
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import converters
from converters.files import atomic_write
from gmn.architectures import BUILTIN
from gmn.cli import main
from gmn.data import ZooDataset
from gmn.zoo import Zoo, import_folder
from gmn.zoo.catalogue import Catalogue

OUTCOMES: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    print("\nhostile CLI outcomes:", ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))


def _one_error(capsys, argv: list[str]) -> str:
    """Run ``gmn argv``: exit 2 and one error line on stderr, the last (progress bars may come first)."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2, (argv, code, err[-2000:])
    assert lines and lines[-1].startswith("gmn: error: "), (argv, lines[-5:])
    assert all(line.startswith("converting ") for line in lines[:-1]), (argv, lines[-5:])  # tqdm's bars only
    assert "Traceback" not in err and "usage:" not in err
    return lines[-1]


def _mlp_checkpoint(path: Path, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in BUILTIN["mlp"][0]().state_dict().items()}
    save_file(state, path)
    return state


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _zoo(tmp_path: Path, n: int = 3) -> Path:
    """A tiny imported zoo: ``n`` built-in MLP checkpoints with test accuracies."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    for i in range(n):
        _mlp_checkpoint(folder / f"m{i}.safetensors", i)
    rows = [{"path": f"m{i}.safetensors", "test_acc": 0.5 + i / 10} for i in range(n)]
    import_folder(folder, _csv(tmp_path / "t.csv", rows), arch="mlp").catalogue.close()
    return folder


# --- options: every subcommand, checked at parse time ----------------------------------------

_BAD = {
    "positive_int": st.one_of(st.integers(max_value=0).map(str), st.sampled_from(["1.5", "x", "", "1e3"])),
    "nonnegative_int": st.one_of(st.integers(max_value=-1).map(str), st.sampled_from(["0.5", "y"])),
    "at_least_2": st.one_of(st.integers(max_value=1).map(str), st.just("two")),
    "positive_float": st.one_of(st.floats(max_value=0.0, allow_nan=False).map(repr),
                                st.sampled_from(["nan", "inf", "-inf", "x"])),
    "finite_float": st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999", "abc", ""]),
    "fraction": st.one_of(st.floats(min_value=1.0, exclude_min=True, allow_nan=False, allow_infinity=False).map(repr),
                          st.floats(max_value=0.0, allow_nan=False, allow_infinity=False).map(repr),
                          st.just("nan")),
    "finite_floats": st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=3)
                       .flatmap(lambda xs: st.sampled_from(["nan", "inf", "x", ""]).map(
                           lambda bad: ",".join([*map(repr, xs), bad]))),
    "shape": st.sampled_from(["0,3", "-1,2", "a,b", "", "3,,4", "2.5"]),
    "names": st.sampled_from(["", ",", "test_acc,,gap", " "]),
    "aggregations": st.sampled_from(["median", "mean+mean", "mean+", "", "MAX"]),
}

#: (command words, option, kind of bad value); the positionals name files that need not exist:
#: a bad option must stop the command before it looks at them
_OPTIONS = [
    *[(["zoo", "build", "{tmp}/z"], o, k) for o, k in (("--runs", "positive_int"), ("--epochs", "positive_int"),
                                                      ("--workers", "positive_int"), ("--seed", "nonnegative_int"))],
    (["zoo", "import", "{tmp}", "--targets", "{tmp}/t.csv"], "--input-shape", "shape"),
    *[(["bench", "property", "--out", "{tmp}/b"], o, k) for o, k in (
        ("--seeds", "positive_int"), ("--runs", "positive_int"), ("--train-epochs", "positive_int"),
        ("--hidden", "positive_int"), ("--layers", "positive_int"), ("--batch-size", "positive_int"),
        ("--patience", "positive_int"), ("--lr", "positive_float"))],
    *[(["train", "{tmp}/z", "--out", "{tmp}/o"], o, k) for o, k in (
        ("--hidden", "positive_int"), ("--nproc", "positive_int"), ("--train-epochs", "positive_int"),
        ("--seed", "nonnegative_int"), ("--lr", "positive_float"), ("--targets", "names"),
        ("--aggr", "aggregations"))],
    *[(["generate", "{tmp}/z", "--out", "{tmp}/g"], o, k) for o, k in (
        ("--count", "positive_int"), ("--steps", "positive_int"), ("--target", "finite_float"),
        ("--guidance", "finite_float"), ("--hidden", "positive_int"))],
    *[(["edit", "{tmp}/z", "--out", "{tmp}/e"], o, k) for o, k in (
        ("--inputs", "positive_int"), ("--scale", "positive_float"), ("--probes", "nonnegative_int"))],
    *[(["align", "a.pt", "b.pt", "-o", "{tmp}/x.pt"], o, k) for o, k in (
        ("--iterations", "positive_int"), ("--samples", "positive_int"))],
    *[(["merge", "a.pt", "b.pt", "-o", "{tmp}/x.pt"], o, k) for o, k in (
        ("--weights", "finite_floats"), ("--density", "fraction"), ("--scale", "finite_float"),
        ("--seed", "nonnegative_int"))],
    *[(["barrier", "a.pt", "b.pt", "--out", "{tmp}/r"], o, k) for o, k in (
        ("--points", "at_least_2"), ("--samples", "positive_int"))],
    (["convert", "cnn", "-o", "{tmp}/g.pt"], "--input-shape", "shape"),
    (["inspect", "cnn"], "--input-shape", "shape"),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bad_option_is_one_line_exit_2_before_any_work(tmp_path_factory, capsys, data):
    tmp = tmp_path_factory.mktemp("opts")
    words, option, kind = data.draw(st.sampled_from(_OPTIONS))
    value = data.draw(_BAD[kind])
    argv = [w.replace("{tmp}", str(tmp)) for w in words] + [f"{option}={value}"]
    start = time.perf_counter()
    line = _one_error(capsys, argv)
    assert option in line, line  # names the option ...
    assert "must be" in line or "not" in line or "give" in line, line  # ... and the problem
    assert time.perf_counter() - start < 5 and not any(tmp.iterdir())  # nothing done, nothing written
    OUTCOMES[f"bad option refused ({words[0]})"] += 1


@pytest.mark.parametrize("argv, option", [
    (["train", "{zoo}", "--out", "{file}"], "--out"),
    (["bench", "property", "--out", "{file}"], "--out"),
    (["generate", "{zoo}", "--out", "{file}"], "--out"),
    (["edit", "{zoo}", "--out", "{file}"], "--out"),
    (["barrier", "a.pt", "b.pt", "--out", "{file}"], "--out"),
    (["zoo", "build", "{file}"], "root"),
    (["convert", "cnn", "-o", "{tmp}"], "-o"),
    (["align", "a.pt", "b.pt", "-o", "{tmp}"], "-o"),
    (["merge", "a.pt", "b.pt", "-o", "{tmp}"], "-o"),
    (["inspect", "cnn", "--graphml", "{tmp}"], "--graphml"),
    (["convert", "cnn", "-o", "{tmp}/missing/g.pt"], "-o"),
    (["merge", "a.pt", "b.pt", "-o", "{tmp}/m.txt"], "-o"),
])
def test_paths_of_the_wrong_kind_are_refused_at_parse_time(tmp_path, capsys, argv, option):
    (tmp_path / "f.txt").write_text("a file")
    places = {"{zoo}": str(tmp_path / "z"), "{file}": str(tmp_path / "f.txt"), "{tmp}": str(tmp_path)}
    argv = [next((w.replace(k, v) for k, v in places.items() if k in w), w) for w in argv]
    line = _one_error(capsys, argv)
    assert option in line and ("folder" in line or "must end in" in line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    OUTCOMES["wrong path kind refused"] += 1


def test_argparse_mistakes_are_one_line(capsys):
    for argv, piece in ((["frobnicate"], "invalid choice"), (["convert", "cnn"], "-o/--output"),
                        (["zoo"], "action"), (["merge", "a", "b", "-o", "x.pt", "--method", "avg"], "--method"),
                        (["train", "z", "--no-such-flag"], "--no-such-flag")):
        assert piece in _one_error(capsys, argv)
        OUTCOMES["argparse mistake one line"] += 1
    assert main(["zoo", "--help"]) == 0  # help still prints and exits 0
    assert "usage:" in capsys.readouterr().out


def test_merge_weights_are_checked_before_loading(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _mlp_checkpoint(a, 0), _mlp_checkpoint(b, 1)
    out = str(tmp_path / "m.safetensors")
    line = _one_error(capsys, ["merge", str(a), str(b), "--arch", "mlp", "--weights", "nan,1", "-o", out])
    assert "argument --weights: must be a finite number, got 'nan'" in line
    assert "2 weights for 3 models" in _one_error(
        capsys, ["merge", str(a), str(b), str(a), "--arch", "mlp", "--weights", "1,2", "-o", out])
    assert "sum to 0" in _one_error(capsys, ["merge", str(a), str(b), "--arch", "mlp", "--weights", "1,-1", "-o", out])
    assert not Path(out).exists()
    OUTCOMES["merge weights refused"] += 3


# --- outputs: never replaced without --force, always atomic ------------------------------------

def test_existing_outputs_are_refused_without_force(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _mlp_checkpoint(a, 0), _mlp_checkpoint(b, 1)
    old = {p: p.read_bytes() for p in (a, b)}
    (tmp_path / "old.pt").write_bytes(b"precious")
    (tmp_path / "old.graphml").write_bytes(b"precious")
    for name in ("bar", "train", "bench", "gen", "edit"):
        (tmp_path / name).mkdir()
    (tmp_path / "bar" / "barrier.json").write_text("{}")
    (tmp_path / "train" / "result.json").write_text("{}")
    (tmp_path / "bench" / "property.png").write_bytes(b"png")
    (tmp_path / "gen" / "generated-001.safetensors").write_bytes(b"ckpt")
    (tmp_path / "edit" / "edited").mkdir()
    (tmp_path / "edit" / "edited" / "run-e1.safetensors").write_bytes(b"ckpt")
    t = str(tmp_path)
    cases = [
        (["convert", "mlp", "-o", f"{t}/old.pt"], "exists"),
        (["inspect", "mlp", "--graphml", f"{t}/old.graphml"], "exists"),
        (["align", str(a), str(b), "--arch", "mlp", "-o", str(b)], "is one of this command's inputs"),
        (["merge", str(a), str(b), "--arch", "mlp", "-o", str(a)], "is one of this command's inputs"),
        (["merge", str(a), str(b), "--arch", "mlp", "-o", f"{t}/old.pt"], "exists"),
        (["barrier", str(a), str(b), "--arch", "mlp", "--out", f"{t}/bar"], "barrier.json exists"),
        (["train", f"{t}/nozoo", "--out", f"{t}/train"], "result.json exists"),
        (["bench", "property", "--out", f"{t}/bench"], "property.png exists"),
        (["generate", f"{t}/nozoo", "--out", f"{t}/gen", "--count", "2"], "generated-001.safetensors exists"),
        (["edit", f"{t}/nozoo", "--out", f"{t}/edit"], "already holds outputs"),
    ]
    for argv, message in cases:
        line = _one_error(capsys, argv)
        assert message in line and "--force" in line, line
        OUTCOMES["existing output refused"] += 1
    assert {p: p.read_bytes() for p in (a, b)} == old
    assert (tmp_path / "old.pt").read_bytes() == b"precious" == (tmp_path / "old.graphml").read_bytes()


def test_force_replaces_and_merge_runs_the_builtin_mlp_on_digits(tmp_path, capsys):
    """--force replaces an output, even one of the inputs (read before the atomic write); the
    built-in MLP (64 flat inputs) merges and evaluates on digits' 8x8 images."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sa, sb = _mlp_checkpoint(a, 0), _mlp_checkpoint(b, 1)
    assert main(["merge", str(a), str(b), "--arch", "mlp", "--no-align", "-o", str(a), "--force"]) == 0
    assert "accuracy" in capsys.readouterr().out
    merged = load_file(a)
    for k in sa:
        torch.testing.assert_close(merged[k], (sa[k] + sb[k]) / 2)
    assert main(["merge", str(a), str(b), "--arch", "mlp", "--iterations", "2", "-o", str(tmp_path / "m.pt")]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert "resnet18 takes inputs of shape (3, 64, 64); --data digits has (1, 8, 8)" in _one_error(
        capsys, ["merge", str(a), str(b), "--arch", "resnet18", "-o", str(tmp_path / "r.pt")])
    (tmp_path / "g.pt").write_bytes(b"old")
    assert main(["convert", "mlp", "-o", str(tmp_path / "g.pt"), "--force"]) == 0
    assert int(converters.load_graph(tmp_path / "g.pt").num_param_edges) == sum(v.numel() for v in sa.values())
    OUTCOMES["--force replaced"] += 2


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=st.integers(0, 5000), failure=st.sampled_from(["disk full", "torch pos", "interrupt"]),
       existed=st.booleans())
def test_a_failed_write_leaves_the_old_file_intact(tmp_path_factory, written, failure, existed):
    tmp = tmp_path_factory.mktemp("atomic")
    path = tmp / "out.pt"
    if existed:
        path.write_bytes(b"old contents")

    def write(name: str) -> None:
        with open(name, "wb") as f:
            f.write(os.urandom(written))
        if failure == "disk full":
            raise OSError(errno.ENOSPC, "No space left on device")
        if failure == "torch pos":
            raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 2048 vs 1942")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else OSError) as caught:
        atomic_write(path, write)
    if failure != "interrupt":
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert (path.read_bytes() == b"old contents") if existed else not path.exists()
    assert [p.name for p in tmp.iterdir()] == (["out.pt"] if existed else [])  # no temporary file left
    OUTCOMES["failed write left old file"] += 1


def test_full_disk_during_convert_and_graphml_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import networkx

    def full(*args, **kwargs):
        Path(args[1]).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 2048 vs 1942")

    monkeypatch.setattr(converters, "save_graph", lambda g, tmp: full(g, tmp))
    monkeypatch.setattr(networkx, "write_graphml", lambda g, tmp: full(g, tmp))
    for argv, name in ((["convert", "mlp", "-o", str(tmp_path / "g.pt"), "--force"], "g.pt"),
                       (["inspect", "mlp", "--graphml", str(tmp_path / "g.graphml"), "--force"], "g.graphml")):
        (tmp_path / name).write_bytes(b"old")
        line = _one_error(capsys, argv)
        assert f"could not write {tmp_path / name}" in line and "unexpected pos" in line
        assert (tmp_path / name).read_bytes() == b"old"
        OUTCOMES["full disk one line"] += 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.graphml", "g.pt"]


def test_internal_errors_say_what_and_where(tmp_path, capsys, monkeypatch):
    import gmn.cli.convert

    def broken(*args, **kwargs):
        return [][1]

    monkeypatch.setattr(gmn.cli.convert, "load_target", broken)
    line = _one_error(capsys, ["inspect", "some-model.onnx"])
    assert "IndexError: list index out of range" in line and "tests/test_gmn/test_hostile_cli.py" in line
    assert "gmn inspect some-model.onnx" in line

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(gmn.cli.convert, "load_target", oom)
    line = _one_error(capsys, ["convert", "big.onnx", "-o", str(tmp_path / "g.pt")])
    assert "out of memory" in line and "big.onnx" in line
    OUTCOMES["internal error named"] += 2


# --- catalogue and imports --------------------------------------------------------------------

def test_a_file_that_is_not_a_catalogue_is_named(tmp_path, capsys):
    folder = _zoo(tmp_path)
    (folder / "catalogue.sqlite").write_bytes(os.urandom(4096))
    line = _one_error(capsys, ["zoo", "info", str(folder)])
    assert "catalogue.sqlite" in line and "not a readable zoo catalogue" in line
    (tmp_path / "b").mkdir()
    folder2 = _zoo(tmp_path / "b")
    db = sqlite3.connect(folder2 / "catalogue.sqlite")
    with db:
        db.execute("UPDATE runs SET arch = '\"mlp\"'")  # a string, not an object
    db.close()
    line = _one_error(capsys, ["zoo", "info", str(folder2)])
    assert "catalogue.sqlite" in line and "architecture 'mlp' is not an object" in line
    OUTCOMES["bad catalogue named"] += 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.floats(width=32).map(repr), st.sampled_from(["nan", "inf", "-inf", "1e999", "abc", ""])))
def test_import_targets_are_finite_numbers_or_empty(tmp_path_factory, value):
    tmp = tmp_path_factory.mktemp("targets")
    (tmp / "zoo").mkdir()
    _mlp_checkpoint(tmp / "zoo" / "m0.safetensors", 0)
    _mlp_checkpoint(tmp / "zoo" / "m1.safetensors", 1)
    targets = _csv(tmp / "t.csv", [{"path": "m0.safetensors", "test_acc": 0.5},
                                   {"path": "m1.safetensors", "test_acc": value}])
    try:
        number = float(value) if value.strip() else None
    except ValueError:
        number = "text"
    ok = number is None or (isinstance(number, float) and math.isfinite(number))
    if ok:
        zoo = import_folder(tmp / "zoo", targets, arch="mlp")
        assert [m["test_acc"] for m in zoo.members()] == [0.5, number]
        zoo.catalogue.close()
        OUTCOMES["finite target imported"] += 1
    else:
        with pytest.raises(ValueError, match=r"row 3 of .*t\.csv: target 'test_acc' is"):
            import_folder(tmp / "zoo", targets, arch="mlp")
        assert not (tmp / "zoo" / "catalogue.sqlite").exists()
        OUTCOMES["non-finite target refused"] += 1


def test_import_opens_onnx_rows_and_checks_the_architecture(tmp_path, capsys):
    folder = tmp_path / "zoo"
    folder.mkdir()
    (folder / "random.onnx").write_bytes(os.urandom(512))
    save_file({k: v.contiguous() for k, v in BUILTIN["cnn"][0]().state_dict().items()}, folder / "cnn.safetensors")
    _mlp_checkpoint(folder / "mlp.safetensors", 0)
    t = str(folder)
    _csv(tmp_path / "onnx.csv", [{"path": "random.onnx", "test_acc": 0.5}])
    line = _one_error(capsys, ["zoo", "import", t, "--targets", str(tmp_path / "onnx.csv")])
    assert "row 2" in line and "random.onnx is not a valid ONNX model" in line
    _csv(tmp_path / "arch.csv", [{"path": "mlp.safetensors"}, {"path": "cnn.safetensors"}])
    line = _one_error(capsys, ["zoo", "import", t, "--targets", str(tmp_path / "arch.csv"), "--arch", "mlp"])
    assert "row 3" in line and "cnn.safetensors does not fit --arch" in line
    line = _one_error(capsys, ["zoo", "import", t, "--targets", str(tmp_path / "arch.csv"), "--arch", "resnet18"])
    assert "row 2" in line and "mlp.safetensors does not fit --arch" in line
    assert not (folder / "catalogue.sqlite").exists()
    OUTCOMES["import refused before writing"] += 3


def test_an_import_is_one_transaction(tmp_path, monkeypatch):
    folder = tmp_path / "zoo"
    folder.mkdir()
    _mlp_checkpoint(folder / "m.safetensors", 0)
    targets = _csv(tmp_path / "t.csv", [{"path": "m.safetensors", "run": f"r{i}"} for i in range(5)])
    calls = []
    original = Catalogue._insert

    def dies_at_the_third(self, run):
        calls.append(run["run_id"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would stop it, mid-transaction
        original(self, run)

    monkeypatch.setattr(Catalogue, "_insert", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        import_folder(folder, targets, arch="mlp")
    monkeypatch.setattr(Catalogue, "_insert", original)
    assert Zoo(folder).members() == []  # nothing of the half-done import
    assert len(import_folder(folder, targets, arch="mlp").members()) == 5  # the rerun is not refused
    OUTCOMES["interrupted import left nothing"] += 1


_KILLED_IMPORT = """
import sys, time
from pathlib import Path
from gmn.zoo import import_folder
from gmn.zoo.catalogue import Catalogue
original = Catalogue._insert
def slow(self, run):
    original(self, run)
    Path(sys.argv[3]).touch()
    time.sleep(0.02)
Catalogue._insert = slow
import_folder(sys.argv[1], sys.argv[2], arch="mlp")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_during_an_import_leaves_all_or_nothing(tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    _mlp_checkpoint(folder / "m.safetensors", 0)
    n = 300
    targets = _csv(tmp_path / "t.csv", [{"path": "m.safetensors", "run": f"r{i:04d}"} for i in range(n)])
    marker = tmp_path / "inserting"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_IMPORT, str(folder), str(targets), str(marker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the import never reached the catalogue"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert len(Zoo(folder).catalogue.runs()) == 0  # rolled back: none of the runs inserted before the kill
    assert len(import_folder(folder, targets, arch="mlp").members()) == n
    OUTCOMES["kill -9 import left nothing"] += 1


# --- the cache --------------------------------------------------------------------------------

def test_replaced_checkpoints_are_never_served_from_the_cache(tmp_path, capsys):
    folder = _zoo(tmp_path)
    first = ZooDataset(folder, progress=False)
    new = _mlp_checkpoint(tmp_path / "new.safetensors", 99)
    (tmp_path / "new.safetensors").replace(folder / "m1.safetensors")  # same path, new weights
    _csv(tmp_path / "t2.csv", [{"path": "m1.safetensors", "test_acc": 0.9}])
    assert main(["zoo", "import", str(folder), "--targets", str(tmp_path / "t2.csv"), "--arch", "mlp",
                 "--replace"]) == 0
    capsys.readouterr()
    second = ZooDataset(folder, progress=False)
    i = next(j for j, m in enumerate(second.members) if m["path"] == "m1.safetensors")
    expected = converters.state_values(second.templates[second.arch_keys[i]], new)
    assert torch.equal(second.values[i], expected)
    assert not torch.equal(first.values[i], expected)
    # the same file overwritten in place, without any import: converted again too
    _mlp_checkpoint(folder / "m1.safetensors", 7)
    third = ZooDataset(folder, progress=False)
    assert torch.equal(third.values[i], converters.state_values(third.templates[third.arch_keys[i]],
                                                                load_file(folder / "m1.safetensors")))
    assert len(list((folder / "processed").glob("graphs-*.pt"))) == 3
    OUTCOMES["stale cache never served"] += 2


def _cache_file(folder: Path) -> Path:
    files = list((folder / "processed").glob("graphs-*.pt"))
    assert len(files) == 1
    return files[0]


def test_a_cache_outside_the_zoo_is_never_read(tmp_path, capsys):
    folder = _zoo(tmp_path)
    ZooDataset(folder, progress=False)
    outside = tmp_path / "elsewhere"
    (folder / "processed").rename(outside)
    (folder / "processed").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="is a link"):
        ZooDataset(folder, progress=False)
    line = _one_error(capsys, ["train", str(folder), "--targets", "test_acc", "--out", str(tmp_path / "o")])
    assert "processed is a link" in line
    (folder / "processed").unlink()
    (folder / "processed").mkdir()
    cache = next(outside.glob("graphs-*.pt"))
    (folder / "processed" / cache.name).symlink_to(cache)
    with pytest.raises(ValueError, match="never read through a link"):
        ZooDataset(folder, progress=False)
    OUTCOMES["cache link refused"] += 3


def test_a_cache_with_nan_or_a_bad_checksum_is_refused(tmp_path, capsys):
    from gmn.data import zoo_dataset

    folder = _zoo(tmp_path)
    ZooDataset(folder, progress=False)
    path = _cache_file(folder)
    payload = torch.load(path, weights_only=True)
    payload["values"][0][3] = float("nan")
    torch.save(payload, path)
    with pytest.raises(ValueError, match="fails its checksum"):
        ZooDataset(folder, progress=False)
    payload["checksum"] = zoo_dataset._checksum(payload)  # a forged checksum: the NaN is still refused
    torch.save(payload, path)
    with pytest.raises(ValueError, match="NaN/inf"):
        ZooDataset(folder, progress=False)
    path.write_bytes(os.urandom(300))
    line = _one_error(capsys, ["train", str(folder), "--targets", "test_acc", "--out", str(tmp_path / "o")])
    assert str(path) in line and "unreadable" in line and "weights_only=False" not in line
    OUTCOMES["bad cache refused"] += 3


def _bomb(path: Path) -> Path:
    """A zip whose one data entry inflates 8 MiB of zeros from a few KiB (DEFLATE): what
    ``torch.load`` would inflate unchecked."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"")
        z.writestr("archive/data/0", bytes(8 << 20))
    return path


def _loads(monkeypatch) -> list[Path]:
    """Every path torch.load is asked to read from now on."""
    seen, original = [], torch.load

    def spy(f, *args, **kwargs):
        seen.append(Path(f))
        return original(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return seen


def test_an_inflating_cache_is_refused_before_torch_load(tmp_path, capsys, monkeypatch):
    folder = _zoo(tmp_path)
    ZooDataset(folder, progress=False)
    path = _bomb(_cache_file(folder))
    loads = _loads(monkeypatch)
    with pytest.raises(ValueError, match=r"the zoo's cache .*zip bomb; remove it") as err:
        ZooDataset(folder, progress=False)
    assert str(path) in str(err.value) and path not in loads
    line = _one_error(capsys, ["train", str(folder), "--targets", "test_acc", "--out", str(tmp_path / "o")])
    assert str(path) in line and "zip bomb" in line and path not in loads
    OUTCOMES["inflating cache refused"] += 2


def test_inflating_training_state_is_refused_before_torch_load(tmp_path, capsys, monkeypatch):
    folder = _zoo(tmp_path, n=5)
    state = tmp_path / "o" / "state" / "gmn.pt"  # a state a killed `gmn train` would resume from
    state.parent.mkdir(parents=True)
    _bomb(state)
    loads = _loads(monkeypatch)
    line = _one_error(capsys, ["train", str(folder), "--targets", "test_acc", "--out", str(tmp_path / "o"),
                               "--train-epochs", "1", "--hidden", "8", "--layers", "1", "--device", "cpu"])
    assert str(state) in line and "zip bomb" in line and state not in loads
    OUTCOMES["inflating training state refused"] += 1


def test_train_checks_the_state_it_reads_back(tmp_path, capsys, monkeypatch):
    from converters import limits

    folder = _zoo(tmp_path, n=5)
    checked, original = [], limits.check_archive

    def spy(path, *args, **kwargs):
        checked.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(limits, "check_archive", spy)
    monkeypatch.setattr("gmn.data.zoo_dataset.check_archive", spy)  # the zoo's cache, read by the second run
    loads = _loads(monkeypatch)
    out = tmp_path / "o"
    args = ["train", str(folder), "--targets", "test_acc", "--out", str(out), "--train-epochs", "1", "--hidden", "8",
            "--layers", "1", "--device", "cpu"]
    assert main(args) == 0
    assert main([*args, "--force"]) == 0  # resumes: reads the state the first run left
    capsys.readouterr()
    state = out / "state" / "gmn.pt"
    assert state in loads and state in checked  # every file torch.load reads is checked first
    assert set(loads) <= set(checked), set(loads) - set(checked)
    OUTCOMES["train's state checked before torch.load"] += 1


def test_nan_weights_and_targets_are_refused_not_trained_on(tmp_path):
    folder = _zoo(tmp_path)
    state = load_file(folder / "m2.safetensors")
    key = next(iter(state))
    state[key].view(-1)[0] = float("nan")
    save_file(state, folder / "m2.safetensors")
    with pytest.raises(ValueError, match=r"m2\.safetensors holds 1 NaN/inf parameter values"):
        ZooDataset(folder, cache=False, progress=False)
    _mlp_checkpoint(folder / "m2.safetensors", 2)
    db = sqlite3.connect(folder / "catalogue.sqlite")
    with db:
        db.execute("UPDATE checkpoints SET test_acc = 9e999 WHERE path = 'm1.safetensors'")  # inf
    db.close()
    with pytest.raises(ValueError, match="target 'test_acc' is inf, not a finite number"):
        ZooDataset(folder, progress=False)
    OUTCOMES["non-finite training input refused"] += 2


def test_a_read_only_zoo_trains_from_memory(tmp_path, capsys, monkeypatch):
    from gmn.data import zoo_dataset

    folder = _zoo(tmp_path)

    def read_only(path, write):
        raise OSError(f"could not write {path}: PermissionError: [Errno 13] Permission denied")

    monkeypatch.setattr(zoo_dataset, "atomic_write", read_only)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # the catalogue opens with mode=ro
    ds = ZooDataset(folder, progress=False)
    err = capsys.readouterr().err
    assert err.count("gmn: note: cannot write the zoo's cache") == 1 and "kept in memory" in err
    assert len(ds) == 3 and not list((folder / "processed").glob("graphs-*.pt"))
    with pytest.raises(ValueError, match="not a readable zoo catalogue"):  # opened read-only: nothing written
        ds.zoo.catalogue.add_run({"run_id": "x", "arch": {"family": "builtin", "name": "mlp"}, "hparams": {},
                                  "status": "done", "checkpoints": []})
    OUTCOMES["read-only zoo trained in memory"] += 1
