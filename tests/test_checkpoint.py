"""Checkpoints and resume: a run killed with SIGKILL and resumed gives the numbers of an
uninterrupted run bit for bit; corrupt checkpoints are detected by checksum, named, and skipped.

The SIGKILL test runs the real ``madloop`` command in a subprocess (sample mode, so each generation
takes milliseconds), polls the checkpoint index to kill it mid-loop, resumes it, and compares
``metrics.parquet`` with an uninterrupted run using ``assert_frame_equal(check_exact=True)``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import madloop.checkpoint as checkpoint
from madloop.checkpoint import (
    ArmCheckpoints,
    CheckpointError,
    decode_kept,
    encode_kept,
    load_npz,
    npz_bytes,
)
from madloop.cli import app
from madloop.config import ConfigError
from madloop.experiment import run as experiment_run
from madloop.types import Frame, Points, Stats
from processes import madloop_run

SLOW_CFG = """
name = "killme"
seed = 11
generations = 40
replicates = 8

[data]
source = "gaussian"
dim = 6
covariance = "random"

[model]
family = "gaussian"
mode = "sample"

[loop]
regime = "accumulate-subsample"
real_size = 0
synthetic_size = 400

[[arms]]
name = "fresh"
loop.regime = "fresh-data"
loop.real_size = 100
loop.synthetic_size = 300
sampling.bias = 0.9
"""


def run(*args, **kwargs):
    """``madloop.run`` checkpointed after every generation unless a test says otherwise (the
    default cadence is timed): these tests crash at, count and corrupt known checkpoints."""
    kwargs.setdefault("checkpoint_every", 1)
    return experiment_run(*args, **kwargs)


def tiny_cfg(**over) -> dict:
    cfg = {
        "name": "tiny",
        "seed": 5,
        "generations": 12,
        "replicates": 3,
        "data": {"source": "gaussian", "dim": 3, "covariance": "random"},
        "model": {"family": "gaussian", "mode": "sample"},
        "loop": {"regime": "accumulate", "synthetic_size": 7},
        "arms": [
            {
                "name": "ex",
                "model.mode": "exact",
                "loop.regime": "synthetic-augmentation",
                "loop.real_size": 4,
                "loop.synthetic_size": 6,
            },
            {"name": "sub x+y", "loop.regime": "accumulate-subsample", "loop.real_size": 2},
        ],
    }
    cfg.update(over)
    return cfg


class Crash(Exception):
    pass


def crash_at(arm: str, generation: int):
    def progress(a: str, g: int, T: int) -> None:
        if a == arm and g == generation:
            raise Crash

    return progress


def test_sigkill_mid_loop_then_resume_is_bit_exact(tmp_path: Path) -> None:
    cfg = tmp_path / "slow.toml"
    cfg.write_text(SLOW_CFG)
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = madloop_run(str(cfg), "--out", str(killed))
    target = killed / "checkpoints" / "fresh"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # kill once the second arm has 3 checkpoints written
            if len(list(target.glob("gen*/index.json"))) >= 2 and any(
                int(p.parent.name[3:]) >= 3 for p in target.glob("gen*/index.json")
            ):
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {proc.communicate()}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.parquet").exists()  # it really died mid-loop
    base_index = sorted((killed / "checkpoints" / "base").glob("gen*/index.json"))[-1]
    done = json.loads(base_index.read_text())
    assert done["finished"] and done["generation"] == 40
    base_mtime = base_index.stat().st_mtime_ns

    again = madloop_run(str(cfg), "--out", str(killed))  # without --resume: refused
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "--resume" in err and "Traceback" not in err

    resumed = madloop_run(str(cfg), "--out", str(killed), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "arm 'base': finished at generation 40; not recomputed" in err
    assert "arm 'fresh': resuming after generation" in err
    assert base_index.stat().st_mtime_ns == base_mtime  # the finished arm was not recomputed

    run(str(cfg), out=ref)  # uninterrupted
    got = pd.read_parquet(killed / "metrics.parquet")
    want = pd.read_parquet(ref / "metrics.parquet")
    assert len(got) == 2 * 40 * 8 * 5
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    prov = [pd.read_csv(d / "provenance.csv") for d in (killed, ref)]
    pd.testing.assert_frame_equal(*prov, check_exact=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    return run(tiny_cfg()).metrics


def _crashed_run(out: Path, arm: str = "sub x+y", at: int = 8, keep: int = 3) -> None:
    with pytest.raises(Crash):
        run(tiny_cfg(), out=out, progress=crash_at(arm, at), keep_checkpoints=keep)


def _arm_dir(out: Path, arm: str) -> Path:
    return ArmCheckpoints(out / "checkpoints", arm, {}).dir


@pytest.mark.parametrize("arm", ["base", "ex", "sub x+y"])
def test_crash_in_each_arm_resumes_bit_exact(tmp_path, reference, arm) -> None:
    _crashed_run(tmp_path, arm=arm, at=5)
    notes: list[str] = []
    res = run(tiny_cfg(), out=tmp_path, resume=True, log=notes.append)
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)
    assert f"arm '{arm}': resuming after generation 5" in notes
    assert res.manifest["resumed_from"][arm] == 5
    # arm names never escape the checkpoint directory
    assert all(p.parent == tmp_path / "checkpoints" for p in (tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "target, damage",
    [
        ("model.npz", "flip"),
        ("kept.npz", "truncate"),
        ("index.json", "flip"),
        ("model.npz", "delete"),
    ],
)
def test_corrupt_newest_checkpoint_falls_back_and_says_so(
    tmp_path, reference, target, damage
) -> None:
    _crashed_run(tmp_path)
    gen_dir = _arm_dir(tmp_path, "sub x+y") / "gen000008"
    path = gen_dir / target
    data = bytearray(path.read_bytes())
    if damage == "flip":
        for i in (len(data) // 3, len(data) // 2):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()
    notes: list[str] = []
    res = run(tiny_cfg(), out=tmp_path, resume=True, log=notes.append)
    rejected = [n for n in notes if "gen000008 rejected" in n]
    assert len(rejected) == 1, notes
    assert target in rejected[0] and "falling back to gen000007" in rejected[0]
    why = {"flip": "mismatch", "truncate": "mismatch", "delete": "cannot be read"}[damage]
    if target == "index.json":
        why = "index.json"
    assert why in rejected[0]
    assert "arm 'sub x+y': resuming after generation 7" in notes
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)


def test_corrupt_record_restarts_the_arm_from_scratch(tmp_path, reference) -> None:
    _crashed_run(tmp_path)
    rec = _arm_dir(tmp_path, "sub x+y") / "records" / "gen000002.npz"
    rec.write_bytes(rec.read_bytes()[:-7])
    notes: list[str] = []
    res = run(tiny_cfg(), out=tmp_path, resume=True, log=notes.append)
    assert sum("records/gen000002.npz: SHA-256 mismatch" in n for n in notes) == 3  # keep=3
    assert any("starting the arm from generation 0" in n for n in notes)
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)


def test_cli_reports_a_corrupt_checkpoint_by_name(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(SLOW_CFG.replace("generations = 40", "generations = 6"))
    out = tmp_path / "run"
    runner = CliRunner()
    every = ["--checkpoint-every", "1"]
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "-q", "--no-plots", *every])
    assert res.exit_code == 0, res.output
    newest = out / "checkpoints" / "fresh" / "gen000006" / "model.npz"
    newest.write_bytes(newest.read_bytes()[:100])
    again = runner.invoke(app, ["run", str(cfg), "--out", str(out), "-q", "--no-plots"])
    assert again.exit_code == 2 and "--resume" in again.output
    res = runner.invoke(app, ["run", str(cfg), "--out", str(out), "-q", "--no-plots", "--resume"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "checkpoints/fresh/gen000006/model.npz: SHA-256 mismatch" in text
    assert "falling back to gen000005" in text


def test_resume_refuses_another_config(tmp_path) -> None:
    _crashed_run(tmp_path)
    other = tiny_cfg()
    other["arms"][1]["loop.synthetic_size"] = 8
    with pytest.raises(ConfigError) as err:
        run(other, out=tmp_path, resume=True)
    assert "another config" in str(err.value) and "loop.synthetic_size" in str(err.value)


def test_resume_may_extend_generations(tmp_path) -> None:
    run(tiny_cfg(generations=6), out=tmp_path)
    longer = run(tiny_cfg(generations=12), out=tmp_path, resume=True)
    fresh = run(tiny_cfg(generations=12))
    pd.testing.assert_frame_equal(longer.metrics, fresh.metrics, check_exact=True)
    with pytest.raises(ConfigError, match="already at generation 12"):
        run(tiny_cfg(generations=4), out=tmp_path, resume=True)


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_checkpoints_bounds_disk(tmp_path, keep) -> None:
    run(tiny_cfg(), out=tmp_path, keep_checkpoints=keep)
    for arm in ("base", "ex", "sub x+y"):
        gens = sorted(p.name for p in _arm_dir(tmp_path, arm).glob("gen*"))
        assert gens == [f"gen{t:06d}" for t in range(12 - keep + 1, 13)]
        assert len(list((_arm_dir(tmp_path, arm) / "records").glob("*.npz"))) == 12


def test_checkpoint_every_k(tmp_path, reference) -> None:
    with pytest.raises(Crash):
        run(tiny_cfg(), out=tmp_path, progress=crash_at("ex", 8), checkpoint_every=5)
    assert sorted(p.name for p in _arm_dir(tmp_path, "ex").glob("gen*")) == ["gen000005"]
    res = run(tiny_cfg(), out=tmp_path, resume=True)
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)


def test_records_since_a_checkpoint_go_into_one_file(tmp_path) -> None:
    run(tiny_cfg(), out=tmp_path, checkpoint_every=5)  # checkpoints at 5, 10 and 12 (the end)
    names = sorted(p.name for p in (_arm_dir(tmp_path, "ex") / "records").iterdir())
    assert names == ["gen000001-000005.npz", "gen000006-000010.npz", "gen000011-000012.npz"]


def test_the_default_cadence_bounds_the_time_checkpoints_take(monkeypatch) -> None:
    """Cadence(None): due after the first generation, then once 1/share times the last
    checkpoint's cost has passed since it ended; the last generation always."""
    clock = [100.0]
    monkeypatch.setattr(checkpoint.time, "perf_counter", lambda: clock[0])
    cadence = checkpoint.Cadence(None, share=0.05)
    assert cadence.due(1)
    cadence.saved(started=clock[0] - 0.01)  # a checkpoint of 10 ms just ended
    clock[0] += 0.19
    assert not cadence.due(2)  # 190 ms < 20 x 10 ms
    assert cadence.due(2, last=True)
    clock[0] += 0.011
    assert cadence.due(3)
    assert [g for g in range(1, 13) if checkpoint.Cadence(5).due(g)] == [5, 10]
    with pytest.raises(ValueError, match="every"):
        checkpoint.Cadence(0)


def test_a_fast_loop_checkpoints_a_few_generations_and_resumes_bit_exact(tmp_path) -> None:
    cfg = tiny_cfg(generations=300)
    with pytest.raises(Crash):
        run(cfg, out=tmp_path, progress=crash_at("ex", 250), checkpoint_every=None)
    saved = sorted(int(p.parent.name[3:]) for p in _arm_dir(tmp_path, "ex").glob("gen*/index.json"))
    assert saved and saved[-1] < 250  # a checkpoint before the crash, not one a generation
    records = list((_arm_dir(tmp_path, "ex") / "records").iterdir())
    assert len(records) < 250  # the records of many generations per file
    res = run(cfg, out=tmp_path, resume=True, checkpoint_every=None)
    pd.testing.assert_frame_equal(res.metrics, run(cfg).metrics, check_exact=True)


def test_kept_batches_round_trip_with_shared_frames() -> None:
    rng = np.random.default_rng(0)
    frame = Frame(rng.standard_normal((2, 3)), np.tril(rng.standard_normal((2, 3, 3))))
    a = Points.tagged(rng.standard_normal((2, 4, 3)), source=1, origin=3, frame=frame)
    b = Points.tagged(
        rng.standard_normal((2, 5, 3)),
        source=0,
        origin=0,
        frame=frame,
        y=rng.integers(0, 3, (2, 5)),
    )
    c = Points.tagged(rng.standard_normal((2, 2, 3)), source=0, origin=0)
    s = Stats(
        np.array([4, 4]),
        rng.standard_normal((2, 3)),
        np.tril(np.ones((2, 3, 3))),
        {(0, 0): np.array([2, 2]), (1, 3): np.array([2, 2])},
    )
    arrays, meta = encode_kept({"a": a, "b": b, "c": c, "s": s})
    back = decode_kept(load_npz(npz_bytes(arrays)), json.loads(json.dumps(meta)))
    assert back["a"].frame is back["b"].frame and back["c"].frame is None
    for name, orig in (("a", a), ("b", b), ("c", c)):
        for attr in ("X", "source", "origin", "y"):
            x, y = getattr(orig, attr), getattr(back[name], attr)
            assert (x is None and y is None) or (np.array_equal(x, y) and x.dtype == y.dtype)
    np.testing.assert_array_equal(back["a"].frame.factor, frame.factor)
    assert back["s"].provenance.keys() == s.provenance.keys()
    np.testing.assert_array_equal(back["s"].factor, s.factor)
    # the union of two batches in one frame stays in that frame after a restore, as before
    assert Points.concat([back["a"], back["b"]]).frame is back["a"].frame


def test_object_arrays_are_never_unpickled() -> None:
    data = npz_bytes({"evil": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        load_npz(data)


def test_config_mismatch_is_a_checkpoint_error(tmp_path) -> None:
    from madloop.config import parse
    from madloop.engines import build_loop

    _, arms = parse(tiny_cfg())
    loop = build_loop(arms[0])
    ck = ArmCheckpoints(tmp_path, "base", arms[0].config.to_dict())
    for rec in loop.run(2):
        ck.save_record(rec)
        ck.save(loop)
    other = ArmCheckpoints(tmp_path, "base", {**arms[0].config.to_dict(), "seed": 6})
    with pytest.raises(CheckpointError, match="seed"):
        other.restore(build_loop(arms[0]))


def test_a_run_directory_in_use_is_refused(tmp_path) -> None:
    from madloop.storage.lock import DirectoryLock as RunLock

    with RunLock(tmp_path):
        with pytest.raises(ConfigError, match=f"another madloop run \\(pid {os.getpid()}\\)"):
            run(tiny_cfg(), out=tmp_path)
    run(tiny_cfg(generations=2), out=tmp_path)  # free again once released


def test_resume_under_other_versions_says_so(tmp_path, reference, monkeypatch) -> None:
    import madloop.experiment as ex

    _crashed_run(tmp_path)
    real = ex.versions()
    monkeypatch.setattr(ex, "versions", lambda: {**real, "numpy": "0.0-other"})
    notes: list[str] = []
    res = run(tiny_cfg(), out=tmp_path, resume=True, log=notes.append)
    assert any(f"numpy {real['numpy']} -> 0.0-other" in n for n in notes), notes
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)


def test_out_that_is_a_file_is_a_clean_error(tmp_path) -> None:
    cfg, target = tmp_path / "c.toml", tmp_path / "file"
    cfg.write_text(SLOW_CFG.replace("generations = 40", "generations = 2"))
    target.write_text("not a directory")
    res = CliRunner().invoke(app, ["run", str(cfg), "--out", str(target), "-q"])
    assert res.exit_code == 2 and "cannot be used as a run directory" in res.output
    assert target.read_text() == "not a directory"


def test_python_default_starts_afresh_and_false_refuses(tmp_path, reference) -> None:
    _crashed_run(tmp_path)
    with pytest.raises(ConfigError, match="pass --resume"):
        run(tiny_cfg(), out=tmp_path, resume=False)
    res = run(tiny_cfg(), out=tmp_path)  # default: a fresh run replaces them
    pd.testing.assert_frame_equal(res.metrics, reference, check_exact=True)
    assert "resumed_from" not in res.manifest
    assert sorted(p.name for p in _arm_dir(tmp_path, "base").glob("gen*")) == [
        "gen000011",
        "gen000012",
    ]


def test_other_batch_types_round_trip_generically() -> None:
    """Another family's sufficient statistics (e.g. counts) are dataclasses of arrays: encoded
    field by field and rebuilt only if the type is one of madloop's own."""
    from madloop.checkpoint import decode_dataclass, encode_dataclass

    s = Stats(
        np.array([4, 5]),
        np.ones((2, 3)),
        np.tril(np.ones((2, 3, 3))),
        {(0, 0): np.array([2, 2]), (1, 3): np.array([2, 3])},
    )
    arrays: dict[str, np.ndarray] = {}
    meta = json.loads(json.dumps(encode_dataclass(s, "k0/", arrays)))
    back = decode_dataclass(meta, "k0/", load_npz(npz_bytes(arrays)))
    assert isinstance(back, Stats) and back.provenance.keys() == s.provenance.keys()
    np.testing.assert_array_equal(back.factor, s.factor)
    np.testing.assert_array_equal(back.provenance[(1, 3)], [2, 3])
    for bad in ("os:system", "builtins:dict", "madloop.types:np.ndarray"):
        with pytest.raises(CheckpointError):
            decode_dataclass({**meta, "type": bad}, "k0/", arrays)


def test_npz_keeps_memory_layout() -> None:
    """Batched matmul rounds differently on BLAS and non-BLAS paths, chosen by strides: a
    restored array must have the strides of the saved one (views, broadcasts, F order)."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4, 3, 5))
    cases = {
        "c": base,
        "f": np.asfortranarray(base),
        "swapped": np.swapaxes(base, 1, 2),
        "broadcast": np.broadcast_to(base[0], (4, 3, 5)),
        "broadcast_t": np.broadcast_to(base[0].T, (6, 5, 3)),
        "scalar": np.array(2.5),
    }
    back = load_npz(npz_bytes(cases))
    assert back.keys() == cases.keys()
    for k, a in cases.items():
        np.testing.assert_array_equal(back[k], a)
        assert back[k].strides == a.strides, k
    x = np.swapaxes(rng.standard_normal((50, 6, 6)), 1, 2)
    y = rng.standard_normal((50, 6, 40))
    assert np.array_equal(load_npz(npz_bytes({"x": x}))["x"] @ y, x @ y)


@pytest.mark.parametrize("at", [1, 2])
@pytest.mark.parametrize("mode", ["sample", "exact"])
def test_crash_early_with_a_fixed_real_set(tmp_path, at, mode) -> None:
    cfg = tiny_cfg(generations=5, arms=[])
    cfg["model"]["mode"] = mode
    cfg["loop"] = {"regime": "synthetic-augmentation", "real_size": 5, "synthetic_size": 4}
    ref = run(cfg).metrics
    with pytest.raises(Crash):
        run(cfg, out=tmp_path, progress=crash_at("base", at))
    res = run(cfg, out=tmp_path, resume=True)
    pd.testing.assert_frame_equal(res.metrics, ref, check_exact=True)
