"""partition = "file": a hand-made split gives exactly those rows; every bad file is one clear
line and exit 2 before any work; the cache key follows the file's content; compare and
deploy export-data work with it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fedlth.cli import main
from fedlth.config.scenario import ScenarioError, load_scenario, resolve
from fedlth.data import client_data as cd
from fedlth.data.datasets import ArrayData
from fedlth.data.partition_file import read_partition_file, write_partition_file

SCENARIO = """
dataset = "digits"
model = "mlp"
partition = "file"
partition-file = "split.json"
num-clients = 3
clients-per-round = 3
rounds = 2
local-epochs = 1
eval-every = 1
acc-threshold = 0.0
prune-tolerance = 1.0
prune-rate = 0.5
plots = false  # no figures: none looked at here
"""

# digits: 1,437 train / 360 test. Indices unsorted on purpose; clients 0 and 1 share train
# index 5 (overlap across clients is allowed), client 2's test repeats client 0's.
SPLIT = {
    "clients": [
        {"train": [9, 5, 1, 40, 41, 42, 43, 44], "val": [2, 3], "test": [7, 0, 300]},
        {"train": [5, 100, 101, 102, 103, 104], "val": [1436], "test": [359, 12]},
        {"train": [200, 201, 202, 203, 204, 205, 206], "val": [210, 211], "test": [0, 7, 8]},
    ]
}


def _write(folder: Path, split: object = SPLIT, scenario: str = SCENARIO, raw: str | None = None) -> Path:
    """A scenario and its partition file in `folder`; returns the scenario's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "split.json").write_text(raw if raw is not None else json.dumps(split))
    path = folder / "s.toml"
    path.write_text(scenario)
    return path


def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty FEDLTH_CACHE, with the in-process partition cache cleared."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FEDLTH_CACHE", str(cache))
    cd._splits.cache_clear()
    return cache


def test_a_hand_made_file_gives_exactly_those_rows(tmp_path, digits: ArrayData, monkeypatch):
    _fresh_cache(tmp_path, monkeypatch)
    sc = load_scenario(_write(tmp_path / "exp"))
    assert sc["partition-file"] == str(tmp_path / "exp" / "split.json")  # read from the scenario's folder
    for k, entry in enumerate(SPLIT["clients"]):
        train, val, test = (np.sort(entry[p]) for p in ("train", "val", "test"))
        x = cd.client_data(sc, k)
        assert torch.equal(x.x_train, torch.as_tensor(digits.x_train[train]))
        assert torch.equal(x.y_train, torch.as_tensor(digits.y_train[train]))
        assert torch.equal(x.x_val, torch.as_tensor(digits.x_train[val]))
        assert torch.equal(x.y_val, torch.as_tensor(digits.y_train[val]))
        assert torch.equal(x.x_test, torch.as_tensor(digits.x_test[test]))
        assert torch.equal(x.y_test, torch.as_tensor(digits.y_test[test]))
        split = cd.scenario_splits(sc)[k]
        assert all(getattr(split, p).dtype == np.int64 for p in ("train", "val", "test"))


def test_relative_paths_from_the_scenario_folder_and_from_the_cwd_for_set(tmp_path, monkeypatch):
    path = _write(tmp_path / "exp")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "parts").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert load_scenario(path)["partition-file"] == str(tmp_path / "exp" / "split.json")
    sc = load_scenario(path, ["partition-file=parts/other.json"])
    assert sc["partition-file"] == str(elsewhere / "parts" / "other.json")
    assert load_scenario(path, [f"partition-file={tmp_path}/x.json"])["partition-file"] == f"{tmp_path}/x.json"


def test_partition_and_partition_file_go_together():
    with pytest.raises(ScenarioError, match="'partition-file' is empty"):
        resolve({"partition": "file"})
    with pytest.raises(ScenarioError, match="'partition-file' is set but partition is 'iid'"):
        resolve({"partition-file": "split.json"})


def test_the_cache_key_is_the_files_content(tmp_path, digits: ArrayData, monkeypatch):
    cache = _fresh_cache(tmp_path, monkeypatch)
    sc = load_scenario(_write(tmp_path / "exp"))
    key = cd.data_key(sc)
    assert key[-1] == hashlib.sha256((tmp_path / "exp" / "split.json").read_bytes()).hexdigest()
    first = cd.scenario_splits(sc)
    assert cd._partition_file(key, digits).is_file() and cd._partition_file(key, digits).parent == cache / "partitions"
    cd._splits.cache_clear()
    monkeypatch.setattr(cd, "load_partition_file", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read again")))
    again = cd.scenario_splits(sc)  # another process: from the disk cache
    assert all(np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test) for a, b in zip(first, again, strict=True))
    monkeypatch.undo()
    monkeypatch.setenv("FEDLTH_CACHE", str(cache))
    changed = json.loads(json.dumps(SPLIT))
    changed["clients"][0]["train"] = [50, 51, 52]
    (tmp_path / "exp" / "split.json").write_text(json.dumps(changed))
    assert cd.data_key(sc) != key and cd._partition_file(cd.data_key(sc), digits) != cd._partition_file(key, digits)
    assert torch.equal(cd.client_data(sc, 0).x_train, torch.as_tensor(digits.x_train[[50, 51, 52]]))


def test_an_existing_partition_round_trips_through_a_file(tmp_path):
    sc = resolve({"dataset": "digits", "partition": "dirichlet", "alpha": 0.3, "num-clients": 4, "clients-per-round": 4})
    write_partition_file(tmp_path / "exp" / "split.json", cd.scenario_splits(sc))
    again = load_scenario(_write(tmp_path / "exp", raw=(tmp_path / "exp" / "split.json").read_text(),
                                 scenario=SCENARIO.replace("num-clients = 3", "num-clients = 4")))
    for k in range(4):
        a, b = cd.client_data(sc, k), cd.client_data(again, k)
        for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (k, name)


def _client(k: int, **parts: object) -> dict:
    clients = json.loads(json.dumps(SPLIT["clients"]))
    clients[k].update(parts)
    return {"clients": clients}


BAD = [
    ("missing", None, None, "does not exist"),
    ("bad json", None, '{"clients": [', "not valid JSON"),
    ("not utf-8", None, None, "not valid JSON (not UTF-8 text)"),
    ("top-level list", SPLIT["clients"], None, 'expected {"clients": [{"train"'),
    ("extra top-level key", {**SPLIT, "note": 1}, None, 'expected {"clients"'),
    ("client not an object", {"clients": [[1], *SPLIT["clients"][1:]]}, None, "client 0 must be an object"),
    ("client misses val", {"clients": [{"train": [1], "test": [1]}, *SPLIT["clients"][1:]]}, None, "client 0 misses 'val'"),
    ("unknown key", _client(1, extra=[1]), None, "client 1 has unknown keys 'extra'"),
    ("split not a list", _client(2, val=3), None, "client 2: 'val' must be a list of indices"),
    ("float index", _client(1, train=[1, 2.0]), None, "client 1: 'train': item 1 is 2.0; indices are integers"),
    ("bool index", _client(1, test=[True]), None, "client 1: 'test': item 0 is True"),
    ("negative index", _client(0, val=[-1]), None, "client 0: 'val': index -1 is out of range; indices are >= 0"),
    ("train index past the pool", _client(2, train=[1437]), None,
     "client 2: 'train' index 1437 is out of range; the train pool has 1437 samples"),
    ("val index past the pool", _client(1, val=[5000]), None, "client 1: 'val' index 5000 is out of range; the train pool"),
    ("test index past the pool", _client(0, test=[0, 360]), None,
     "client 0: 'test' index 360 is out of range; the test pool has 360 samples"),
    ("duplicate in a split", _client(1, test=[4, 9, 4]), None, "client 1: 'test' repeats index 4"),
    ("train and val overlap", _client(0, val=[2, 40]), None, "client 0: index 40 is in both 'train' and 'val'"),
    ("empty split", _client(2, test=[]), None, "client 2: 'test' is empty"),
    ("too few clients", {"clients": SPLIT["clients"][:2]}, None, "has 2 clients but num-clients is 3"),
    ("too many clients", {"clients": [*SPLIT["clients"], SPLIT["clients"][0]]}, None, "has 4 clients but num-clients is 3"),
]


@pytest.mark.parametrize(("case", "split", "raw", "needle"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_file_exits_2_with_one_line_and_writes_nothing(tmp_path, monkeypatch, case, split, raw, needle):
    cache = _fresh_cache(tmp_path, monkeypatch)
    path = _write(tmp_path / "exp", split if split is not None else SPLIT, raw=raw)
    if case == "missing":
        (tmp_path / "exp" / "split.json").unlink()
    if case == "not utf-8":
        (tmp_path / "exp" / "split.json").write_bytes(b'{"clients": "\xff"}')
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedlth: error: partition-file "), result.output
    assert str(tmp_path / "exp" / "split.json") in lines[0] and needle in lines[0], lines[0]
    assert not out.exists()
    assert not (cache / "partitions").exists()  # no partition cache file
    if "out of range; the" not in needle:
        assert not cache.exists()  # checks that need no data ran before any data was loaded


def test_a_real_process_exits_2(tmp_path):
    import os
    import subprocess
    import sys

    path = _write(tmp_path / "exp", _client(0, train=[1, 2], val=[2]))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "FEDLTH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", "from fedlth.cli import main; main()", "run", str(path), "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "client 0: index 2 is in both 'train' and 'val'" in done.stderr
    assert not out.exists() and not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()


def _fake_simulate(sc: dict, out: Path, *args: object, **kwargs: object) -> None:
    """fedlth run/compare's engine swapped for the in-process grid (no Ray on 2 shared cores)."""
    from clients.client_app import app as client_app
    from server.local_grid import LocalGrid
    from server.server_app import run_federation

    run_federation(LocalGrid(client_app, sc["num-clients"]), sc, out, client_state_dir=out / "client-state",
                   resume=bool(kwargs.get("resume")))


def test_compare_runs_on_the_file_partition_and_records_its_hash(tmp_path, monkeypatch):
    import server.simulate

    monkeypatch.setattr(server.simulate, "simulate", _fake_simulate)
    path = _write(tmp_path / "exp")
    digest = hashlib.sha256((tmp_path / "exp" / "split.json").read_bytes()).hexdigest()
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", str(path), "--algorithms", "fedavg,local", "--seeds", "2",
                                       "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["algorithm"] for r in json.loads((out / "comparison.json").read_text())["rows"]] == ["fedavg", "local"]
    sizes = {str(k): len(c["test"]) for k, c in enumerate(SPLIT["clients"])}
    for run in (out / alg / f"seed-{s}" for alg in ("fedavg", "local") for s in (0, 1)):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["partition_file"] == {"path": str(tmp_path / "exp" / "split.json"), "sha256": digest}
        assert load_scenario(run / "scenario.toml")["partition-file"] == str(tmp_path / "exp" / "split.json")
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["evaluate"]
        assert {pid: m["num-examples"] for pid, m in last.items()} == sizes  # scored on the file's test rows
    again = CliRunner().invoke(main, ["evaluate", str(out / "fedavg" / "seed-0")], catch_exceptions=False)
    assert again.exit_code == 0 and "3 tickets" in again.output, again.output  # re-evaluated on the file's rows


def test_compare_with_a_bad_file_exits_2(tmp_path):
    path = _write(tmp_path / "exp", _client(1, train=[3, 3]))
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", str(path), "--algorithms", "fedavg", "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "client 1: 'train' repeats index 3" in result.output
    assert not out.exists()


def test_deploy_export_data_writes_the_files_rows(tmp_path, digits: ArrayData):
    from fedlth.data.local_data import local_client_data

    path = _write(tmp_path / "exp")
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["deploy", "export-data", str(path), str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    sc = load_scenario(path)
    assert sorted(p.name for p in out.iterdir()) == [f"client-{k}.npz" for k in range(3)]
    for k, entry in enumerate(SPLIT["clients"]):
        x = local_client_data(out / f"client-{k}.npz", sc, k)
        assert torch.equal(x.y_train, torch.as_tensor(digits.y_train[np.sort(entry["train"])]))
        assert torch.equal(x.x_val, torch.as_tensor(digits.x_train[np.sort(entry["val"])]))
        assert torch.equal(x.x_test, torch.as_tensor(digits.x_test[np.sort(entry["test"])]))


def test_deploy_export_data_with_a_bad_file_exits_2_and_writes_nothing(tmp_path):
    path = _write(tmp_path / "exp", _client(2, test=[0, 9999]))
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["deploy", "export-data", str(path), str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.count("fedlth: error:") == 1 and "client 2: 'test' index 9999 is out of range" in result.output
    assert not out.exists()


def test_structure_checks_need_no_data():
    with pytest.raises(ScenarioError, match="does not exist"):
        read_partition_file("/nonexistent/split.json", 3)


class _Killed(BaseException):
    """Stands in for SIGKILL after a round."""


def test_resume_refuses_a_partition_file_changed_since_the_run_began(tmp_path, monkeypatch):
    import server.simulate
    from clients.client_app import app as client_app
    from server.local_grid import LocalGrid
    from server.server_app import run_federation

    sc = load_scenario(_write(tmp_path / "exp"))
    out = tmp_path / "run"

    def kill(entry: dict) -> None:
        raise _Killed

    with pytest.raises(_Killed):
        run_federation(LocalGrid(client_app, 3), sc, out, on_round=kill, client_state_dir=out / "client-state")
    assert json.loads((out / "partition-file.json").read_text())["sha256"] == cd.data_key(sc)[-1]
    (tmp_path / "exp" / "split.json").write_text(json.dumps(_client(0, test=[1, 2])))
    result = CliRunner().invoke(main, ["run", "--resume", str(out), "--quiet"])
    assert result.exit_code == 2 and "changed since the run began" in result.output, result.output
    assert not (out / "summary.json").exists()
    (tmp_path / "exp" / "split.json").write_text(json.dumps(SPLIT))  # restored: the resume goes on
    monkeypatch.setattr(server.simulate, "simulate", _fake_simulate)
    result = CliRunner().invoke(main, ["run", "--resume", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and (out / "summary.json").is_file(), result.output
