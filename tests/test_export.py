"""Exported tickets: compact files that load into plain CPU modules predicting exactly as the ticket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import fedlth
from fedlth.cli import main
from fedlth.config.scenario import resolve, to_toml
from fedlth.learning.models import bn_pairs, build_model
from fedlth.tickets.export import ExportError, ModelSpec, export_ticket, load_ticket, read_ticket
from fedlth.tickets.masks import Mask, Weights, apply_mask, density, ones_mask, prunable_names
from fedlth.tickets.pruning import magnitude_global, structured_bn, structured_l1
from fedlth.tickets.saved import save_tickets

SHAPES = {"mlp": (1, 8, 8), "cnn1d": (40,), "lenet5": (1, 12, 12), "cifar-cnn": (3, 8, 8), "tabular-mlp": (11,)}


def _ticket(name: str, pruner, amount: float, *, skip_last: bool = True, seed: int = 0) -> tuple[Weights, Mask]:
    torch.manual_seed(seed)
    net = build_model(name, SHAPES[name], 10)
    g = torch.Generator().manual_seed(seed + 1)
    weights = {}
    for key, t in net.state_dict().items():
        # Positive biases make cut channels emit non-zero values after ReLU (the hard case);
        # BatchNorm statistics away from (0, 1) make sure they are carried over.
        if key.endswith(".bias"):
            t = torch.rand(t.shape, generator=g) - 0.2
        elif key.endswith("running_mean"):
            t = 0.1 * torch.randn(t.shape, generator=g)
        elif key.endswith("running_var"):
            t = 0.5 + torch.rand(t.shape, generator=g)
        weights[key] = t.clone()
    mask = pruner(weights, ones_mask(weights, prunable_names(net, skip_last=skip_last)), amount, bn_of=bn_pairs(net))
    return weights, mask


def _reference(name: str, weights: Weights, mask: Mask) -> torch.nn.Module:
    net = build_model(name, SHAPES[name], 10)
    net.load_state_dict(apply_mask(weights, mask))
    return net.eval()


def _same_predictions(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5), float((ya - yb).abs().max())
    assert torch.equal(ya.argmax(dim=1), yb.argmax(dim=1))


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("name", "pruner"), [
    ("mlp", structured_l1), ("cnn1d", structured_l1), ("lenet5", structured_l1),
    ("cifar-cnn", structured_bn), ("tabular-mlp", structured_l1),
])
def test_structured_ticket_is_cut_to_its_kept_channels_and_predicts_the_same(tmp_path, name, pruner):
    weights, mask = _ticket(name, pruner, 0.5)
    path = tmp_path / "t.fltk"
    path.write_bytes(export_ticket(weights, mask, ModelSpec(name, SHAPES[name], 10)))
    net, ref = load_ticket(path), _reference(name, weights, mask)
    assert not net.training and all(not p.is_meta and p.device.type == "cpu" for p in net.parameters())
    _same_predictions(ref, net, torch.randn(64, *SHAPES[name], generator=torch.Generator().manual_seed(3)))
    header = read_ticket(path).header
    assert header["shrunk"] and header["params"]["exported"] == _params(net) < 0.45 * _params(ref)
    # every masked layer but the last keeps half its output channels
    first = next(iter(mask))
    assert len(header["shrunk"][first.split(".")[0]]["kept"]) == mask[first].shape[0] // 2
    assert net.state_dict()[first].shape[0] == mask[first].shape[0] // 2


def test_cut_channels_through_zero_padding_use_an_exact_bias_map(tmp_path):
    weights, mask = _ticket("cnn1d", structured_l1, 0.5)
    exported = read_ticket(export_ticket(weights, mask, ModelSpec("cnn1d", (40,), 10)))
    # conv -> ReLU -> padded conv: a cut channel's constant output is seen differently at the borders
    assert {"2.bias_map", "4.bias_map"} <= set(exported.weights)
    assert not exported.mask or all(bool(m.all()) for m in exported.mask.values())


@pytest.mark.parametrize("name", ["cnn1d", "lenet5", "mlp"])
@pytest.mark.parametrize("d", [1.0, 0.5, 0.2, 0.05])
def test_unstructured_file_size_is_within_the_target(tmp_path, name, d):
    weights, mask = _ticket(name, magnitude_global, 1.0 - d, skip_last=False)
    blob = export_ticket(weights, mask, ModelSpec(name, SHAPES[name], 10))
    exported = read_ticket(blob)
    dense = sum(t.numel() * t.element_size() for t in weights.values())
    # (32 d + 1) / 32 of the raw dense tensors (a torch.save file is larger still) plus a header
    # of under 2 kB here
    assert len(blob) <= (32 * density(mask) + 1) / 32 * dense + 2048, len(blob)
    assert exported.header["density"] == pytest.approx(d, abs=1e-3)
    path = tmp_path / "t.fltk"
    path.write_bytes(blob)
    _same_predictions(_reference(name, weights, mask), load_ticket(path), torch.randn(32, *SHAPES[name]))


def test_unshrunk_round_trip_is_bit_exact():
    weights, mask = _ticket("lenet5", magnitude_global, 0.8)
    exported = read_ticket(export_ticket(weights, mask, ModelSpec("lenet5", SHAPES["lenet5"], 10), shrink=False))
    assert not exported.header["shrunk"] and "shrink was turned off" in exported.header["notes"][0]
    masked = apply_mask(weights, mask)
    assert list(exported.weights) == list(masked)
    assert all(torch.equal(exported.weights[k], masked[k]) for k in masked)
    assert all(torch.equal(exported.mask[k], mask[k]) for k in mask)


def test_export_does_not_touch_its_inputs_or_the_global_rng():
    weights, mask = _ticket("cnn1d", structured_l1, 0.5)
    before = ({k: v.clone() for k, v in weights.items()}, {k: v.clone() for k, v in mask.items()})
    state = torch.get_rng_state()
    export_ticket(weights, mask, ModelSpec("cnn1d", (40,), 10))
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert all(torch.equal(mask[k], before[1][k]) for k in mask)


def test_export_rejects_a_ticket_that_does_not_fit_the_model():
    weights, mask = _ticket("cnn1d", structured_l1, 0.5)
    with pytest.raises(ExportError, match="do not fit the model"):
        export_ticket(weights, mask, ModelSpec("cnn1d", (50,), 10))
    with pytest.raises(ExportError, match="unknown model"):
        export_ticket(weights, mask, ModelSpec("resnet", (40,), 10))


def test_load_ticket_on_garbage_says_what_is_wrong(tmp_path):
    weights, mask = _ticket("mlp", magnitude_global, 0.5)
    good = export_ticket(weights, mask, ModelSpec("mlp", SHAPES["mlp"], 10))
    cases = {
        "missing": (None, "no ticket file"),
        "random": (bytes(range(256)) * 4, "not a fedlth export file"),
        "empty": (b"", "not a fedlth export file"),
        "truncated": (good[: len(good) // 2], "damaged"),
        "flipped": (good[:-10] + bytes([good[-10] ^ 0xFF]) + good[-9:], "checksum"),
        "header": (good[:12] + b"}" + good[13:], "damaged header"),
    }
    for case, (blob, words) in cases.items():
        path = tmp_path / f"{case}.fltk"
        if blob is not None:
            path.write_bytes(blob)
        with pytest.raises(ExportError, match=words) as info:
            load_ticket(path)
        assert "\n" not in str(info.value), case
    torch_pickle = tmp_path / "pickle.pt"
    torch.save({"weights": weights}, torch_pickle)
    with pytest.raises(ExportError, match="not a fedlth export file"):
        load_ticket(torch_pickle)


def test_import_fedlth_is_cheap_and_offers_load_ticket():
    code = "import sys, fedlth; assert 'torch' not in sys.modules; print(fedlth.__all__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert fedlth.load_ticket is load_ticket
    with pytest.raises(AttributeError):
        _ = fedlth.no_such_thing


# --- the command line, on a run folder written by the same writers a run uses -------------

def _run_dir(tmp_path: Path) -> tuple[Path, dict[int, tuple[Weights, Mask]]]:
    sc = resolve({"name": "export-test", "dataset": "digits", "model": "mlp", "num-clients": 3, "clients-per-round": 3,
                  "pruner": "structured-l1"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "scenario.toml").write_text(to_toml(sc))
    tickets = {}
    for pid, (pruner, amount) in enumerate([(structured_l1, 0.5), (magnitude_global, 0.8)]):
        weights, mask = _ticket("mlp", pruner, amount, seed=pid)
        tickets[pid] = (apply_mask(weights, mask), mask)  # a run's tickets hold exact zeros
    tickets[2] = (_ticket("mlp", magnitude_global, 0.0, seed=2)[0], {})  # dense, as FedAvg saves
    save_tickets(run / "tickets", tickets)
    return run, tickets


def _invoke(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def test_cli_export_gives_the_run_tickets_predictions(tmp_path, digits):
    run, tickets = _run_dir(tmp_path)
    x = torch.as_tensor(digits.x_test)
    for pid, (weights, _) in tickets.items():
        out = tmp_path / f"client-{pid}.fltk"
        result = _invoke(str(run), "--client", str(pid), "--out", str(out))
        assert result.exit_code == 0, result.output
        assert f"client {pid}:" in result.output and str(out) in result.output
        in_run = build_model("mlp", (1, 8, 8), 10)
        in_run.load_state_dict(weights)  # exactly how `fedlth evaluate` rebuilds a saved ticket
        _same_predictions(in_run.eval(), fedlth.load_ticket(out), x)
        assert out.stat().st_size < (run / "tickets" / f"client-{pid}.pt").stat().st_size
    assert "layer(s) cut" in _invoke(str(run), "--client", "0", "--out", str(tmp_path / "a"), "--force").output


def _fails(result, words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedlth: error: "), result.output
    assert words in lines[0], lines[0]


def test_cli_export_bad_inputs_exit_2_and_write_nothing(tmp_path):
    run, _ = _run_dir(tmp_path)
    out = tmp_path / "new" / "t.fltk"
    _fails(_invoke(str(tmp_path / "nope"), "--client", "0", "--out", str(out)), "does not exist")
    _fails(_invoke(str(tmp_path), "--client", "0", "--out", str(out)), "not a fedlth run folder")
    _fails(_invoke(str(run), "--client", "7", "--out", str(out)), "client 7 has no ticket in")
    _fails(_invoke(str(run), "--client", "7", "--out", str(out)), "valid ids: 0, 1, 2")
    _fails(_invoke(str(run), "--client", "one", "--out", str(out)), "valid ids: 0, 1, 2")
    (run / "tickets" / "client-1.pt").write_bytes(b"not a torch file")
    _fails(_invoke(str(run), "--client", "1", "--out", str(out)), "unreadable")
    assert not out.parent.exists()
    existing = tmp_path / "existing.fltk"
    existing.write_bytes(b"keep me")
    _fails(_invoke(str(run), "--client", "0", "--out", str(existing)), "pass --force")
    assert existing.read_bytes() == b"keep me"
    _fails(_invoke(str(run), "--client", "0", "--out", str(tmp_path)), "is a folder")
    assert _invoke(str(run), "--client", "0", "--out", str(existing), "--force").exit_code == 0
    assert read_ticket(existing).header["client"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.fltk", "run"]  # no temporary files left
