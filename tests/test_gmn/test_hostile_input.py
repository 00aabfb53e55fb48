"""Zoos, catalogues, checkpoints and saved graphs under hostile or careless input: nothing runs
that should not, nothing is lost, every error is clear (and one line, exit 2, on the command line)."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import converters
from converters import ConversionError
from gmn.architectures import BUILTIN
from gmn.cli import main
from gmn.zoo import Zoo, import_folder


def _folder(tmp_path, n=2):
    folder = tmp_path / "zoo"
    folder.mkdir()
    for i in range(n):
        torch.manual_seed(i)
        save_file(BUILTIN["mlp"][0]().state_dict(), folder / f"m{i}.safetensors")
    return folder


def _csv(path, rows, bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_csv_cannot_name_code_to_run(tmp_path):
    folder = _folder(tmp_path)
    targets = _csv(tmp_path / "t.csv", [{"path": "m0.safetensors", "arch": "os:abort", "test_acc": 0.5}])
    with pytest.raises(ValueError, match="may only name built-in architectures"):
        import_folder(folder, targets, input_shape=(3,))
    assert not (folder / "catalogue.sqlite").exists()  # nothing half-written


def test_a_catalogue_edited_to_name_code_is_not_imported(tmp_path):
    folder = _folder(tmp_path)
    zoo = import_folder(folder, _csv(tmp_path / "t.csv", [{"path": "m0.safetensors", "test_acc": 0.5}]), arch="mlp")
    zoo.catalogue.close()
    db = sqlite3.connect(folder / "catalogue.sqlite")
    with db:
        db.execute("UPDATE runs SET arch = ?", (json.dumps({"family": "module", "name": "os:abort",
                                                             "input_shape": [3]}),))
    db.close()
    member = Zoo(folder).members()[0]
    with pytest.raises(ValueError, match="never imports code its catalogue names"):
        Zoo(folder).model(member)
    db = sqlite3.connect(folder / "catalogue.sqlite")
    with db:
        db.execute("UPDATE runs SET arch = ?", (json.dumps({"family": "module", "name": "torch.nn:Identity",
                                                             "input_shape": [3]}),))
    db.close()
    model, _ = Zoo(folder, allow_modules=("torch.nn:Identity",)).model(Zoo(folder).members()[0])
    assert isinstance(model, torch.nn.Identity)  # the caller's explicit opt-in


def test_imports_never_replace_runs_unless_asked(tmp_path):
    folder = _folder(tmp_path)
    rows = [{"path": "m0.safetensors", "run": "r0", "epoch": 0, "test_acc": 0.5},
            {"path": "m1.safetensors", "run": "r0", "epoch": 1, "test_acc": 0.6}]
    import_folder(folder, _csv(tmp_path / "a.csv", rows), arch="mlp").catalogue.close()
    again = _csv(tmp_path / "b.csv", [{"path": "m1.safetensors", "run": "r0", "epoch": 0, "test_acc": 0.99}])
    with pytest.raises(ValueError, match="never replaces runs"):
        import_folder(folder, again, arch="mlp")
    assert len(Zoo(folder).members()) == 2  # untouched
    import_folder(folder, again, arch="mlp", replace=True).catalogue.close()
    assert [m["test_acc"] for m in Zoo(folder).members()] == [0.99]


def test_duplicate_rows_bom_and_unreadable_checkpoints(tmp_path):
    folder = _folder(tmp_path)
    dup = _csv(tmp_path / "d.csv", [{"path": "m0.safetensors", "run": "r", "epoch": 1},
                                    {"path": "m1.safetensors", "run": "r", "epoch": 1}])
    with pytest.raises(ValueError, match="epoch 1 already given in row 2"):
        import_folder(folder, dup, arch="mlp")
    (folder / "broken.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="broken.safetensors: not a readable safetensors file"):
        import_folder(folder, _csv(tmp_path / "u.csv", [{"path": "broken.safetensors"}]), arch="mlp")
    assert not (folder / "catalogue.sqlite").exists()
    zoo = import_folder(folder, _csv(tmp_path / "bom.csv", [{"path": "m0.safetensors", "test_acc": 0.3}], bom=True),
                        arch="mlp")
    assert zoo.members()[0]["test_acc"] == pytest.approx(0.3)


def test_every_read_is_confined_to_the_zoo(tmp_path):
    folder = _folder(tmp_path)
    import_folder(folder, _csv(tmp_path / "t.csv", [{"path": "m0.safetensors"}]), arch="mlp").catalogue.close()
    save_file({"w": torch.ones(1)}, tmp_path / "outside_42.safetensors")
    db = sqlite3.connect(folder / "catalogue.sqlite")
    with db:
        db.execute("UPDATE checkpoints SET path = '../outside_42.safetensors'")
    db.close()
    zoo = Zoo(folder)
    with pytest.raises(ValueError, match="leads outside the zoo folder"):
        zoo.weights(zoo.members()[0])


def test_zoo_dataset_confines_onnx_members_too(tmp_path):
    from gmn.data import ZooDataset

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    folder = _folder(tmp_path)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(torch.randn(3, 2).numpy(), "w")])
    onnx.save(helper.make_model(graph), folder / "m.onnx")
    import_folder(folder, _csv(tmp_path / "t.csv", [{"path": "m.onnx", "test_acc": 0.5}])).catalogue.close()
    (tmp_path / "outside.onnx").write_bytes(b"")
    db = sqlite3.connect(folder / "catalogue.sqlite")
    with db:
        db.execute("UPDATE checkpoints SET path = '../outside.onnx'")
    db.close()
    with pytest.raises(ValueError, match="leads outside the zoo folder"):
        ZooDataset(folder, cache=False, progress=False)


def test_a_rebuild_notices_runs_an_import_replaced(tmp_path):
    from gmn.zoo import build_zoo

    root = tmp_path / "built"
    build_zoo(root, "small-cnn", runs=1, epochs=1, workers=1, progress=False).close()
    save_file(BUILTIN["mlp"][0]().state_dict(), root / "mine.safetensors")
    import_folder(root, _csv(tmp_path / "t.csv", [{"path": "mine.safetensors", "run": "run-000000"}]), arch="mlp",
                  replace=True).catalogue.close()
    with pytest.raises(ValueError, match="do not match this zoo's settings"):
        build_zoo(root, "small-cnn", runs=1, epochs=1, workers=1, progress=False)


def _saved(tmp_path):
    g = converters.from_torch(BUILTIN["mlp"][0](), BUILTIN["mlp"][1]())
    path = tmp_path / "g.pt"
    converters.save_graph(g, path)
    return g, path


def test_saved_graphs_are_checked_on_load(tmp_path):
    g, path = _saved(tmp_path)
    payload = torch.load(path, weights_only=True)
    flips = 0
    for key in ("edge_index", "edge_value", "num_param_edges"):
        bad = dict(payload)
        bad[key] = payload[key].clone()
        bad[key].view(-1)[0] += 1  # one changed value, as a flipped byte would give
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ConversionError, match="checksum mismatch"):
            converters.load_graph(tmp_path / "bad.pt")
        flips += 1
    assert flips == 3
    for key, value, message in (("edge_index", torch.full((2, 3), 10**6), "outside the graph"),
                                ("num_param_edges", torch.tensor([10**6]), "exceed"),
                                ("param_index", None, "missing param_index")):
        bad = {k: v for k, v in payload.items() if k != "checksum"}
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        bad["checksum"] = converters.io._checksum(bad)  # a consistent file: the structure check refuses it
        with pytest.raises(ConversionError, match=message):
            converters.graph_from_dict(bad)


def test_a_flipped_byte_in_the_file_is_refused(tmp_path):
    """Every flip is refused or changes nothing the graph holds; none loads silently changed."""
    g, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    refused, silent = 0, []
    for at in range(0, len(data), max(1, len(data) // 60)):
        bad = bytearray(data)
        bad[at] ^= 0xFF
        (tmp_path / "flip.pt").write_bytes(bytes(bad))
        try:
            h = converters.load_graph(tmp_path / "flip.pt")
        except ConversionError:
            refused += 1
            continue
        same = all(torch.equal(getattr(h, k), getattr(g, k)) for k in ("edge_index", "edge_value", "edge_type",
                                                                          "edge_pos", "node_type", "num_param_edges"))
        if not same:
            silent.append(at)
    assert refused > 0 and not silent, silent


def test_the_command_line_prints_one_line_and_exits_2(tmp_path, capsys):
    torch.save({"w": torch.ones(2), "obj": object()}, tmp_path / "evil.pt")
    torch.save({"nonsense.weight": torch.ones(2)}, tmp_path / "wrong.pt")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not safetensors")
    for name in ("evil.pt", "wrong.pt", "corrupt.safetensors"):
        assert main(["convert", str(tmp_path / name), "--arch", "mlp", "-o", str(tmp_path / "g.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gmn: error:") and "\n" not in err and "Traceback" not in err, err
        assert name in err and "weights_only=False" not in err
    save_file({"w": torch.ones(2)}, tmp_path / "weights.safetensors")
    assert main(["convert", str(tmp_path / "weights.safetensors"), "-o", str(tmp_path / "g.pt")]) == 2
    assert "name its architecture with --arch" in capsys.readouterr().err
    folder = _folder(tmp_path)
    _csv(tmp_path / "t.csv", [{"path": "../x.safetensors"}])
    assert main(["zoo", "import", str(folder), "--targets", str(tmp_path / "t.csv"), "--arch", "mlp"]) == 2
    assert "leads outside" in capsys.readouterr().err
    assert main(["zoo", "info", str(tmp_path / "missing")]) == 2
    assert "holds no zoo catalogue" in capsys.readouterr().err


_PATHS = st.sampled_from(["m0.safetensors", "m1.safetensors", "../m0.safetensors", "/etc/passwd", "nope.pt", "",
                          "sub/../m1.safetensors"])
_ROWS = st.lists(st.fixed_dictionaries({
    "path": _PATHS, "run": st.sampled_from(["", "a", "b", "run-000001"]),
    "epoch": st.sampled_from(["", "0", "1", "x", "-3"]),
    "arch": st.sampled_from(["", "mlp", "cnn", "os:abort", "builtins:exit"]),
    "test_acc": st.sampled_from(["", "0.5", "nan", "inf", "abc", "1e300"]),
}), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_ROWS, edit=st.sampled_from([None, "path", "arch"]))
def test_random_csvs_and_edits_give_clean_errors_or_a_consistent_zoo(tmp_path_factory, rows, edit):
    tmp = tmp_path_factory.mktemp("prop")
    folder = _folder(tmp)
    targets = _csv(tmp / "t.csv", rows)
    try:
        zoo = import_folder(folder, targets, arch="mlp")
    except (ValueError, FileNotFoundError):
        assert not (folder / "catalogue.sqlite").exists()  # a refused import writes nothing
        return
    members = zoo.members()
    assert len(members) == len({(m["run_id"], m["epoch"]) for m in members}) == len(rows)
    zoo.catalogue.close()
    if edit is not None:
        db = sqlite3.connect(folder / "catalogue.sqlite")
        with db:
            if edit == "path":
                db.execute("UPDATE checkpoints SET path = '../../outside.safetensors'")
            else:
                db.execute("UPDATE runs SET arch = ?", (json.dumps({"family": "module", "name": "os:abort",
                                                                     "input_shape": [3]}),))
        db.close()
    zoo = Zoo(folder)
    for member in zoo.members():
        try:
            zoo.weights(member)
            zoo.model(member)
        except ValueError as err:
            assert edit is not None, err
            assert "outside the zoo folder" in str(err) or "never imports code" in str(err)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_exit_when_a_build_is_killed(tmp_path):
    build = subprocess.Popen([sys.executable, "-m", "gmn.cli", "zoo", "build", str(tmp_path / "z"), "--runs", "40",
                              "--workers", "2", "--epochs", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.time() + 120
        while len(_children(build.pid)) < 2 and time.time() < deadline and build.poll() is None:
            time.sleep(0.2)
        children = _children(build.pid)
        assert len(children) >= 2, "the build never started its workers"
        time.sleep(1.0)
        os.kill(build.pid, signal.SIGKILL)
        build.wait()
        deadline = time.time() + 30
        while any(_alive(c) for c in children) and time.time() < deadline:
            time.sleep(0.2)
        assert not [c for c in children if _alive(c)], "workers outlived the killed build"
    finally:
        build.kill()
        for c in children:
            if _alive(c):
                os.kill(c, signal.SIGKILL)
