"""`make reproduce` on Ray: one tiny job (8x8 digits, KP level, one epoch, small subsets, the KP network counted
under QEMU) run as a Ray task gives the same records, number for number, as the same job run in this process; a
job that fails is named with its error, and a missing cluster is one line."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.studies import reproduce as rp
from kpgen.studies import search
from kpgen.target import toolchain

needs_tools = pytest.mark.skipif(not all(shutil.which(t) for t in toolchain.ALL_TOOLS),
                                 reason="needs arm-none-eabi-gcc, make and qemu-system-arm")
TIMINGS = {"train_seconds", "int8_seconds", "qemu_seconds"}  # wall clock: the only fields allowed to differ


def tiny_job(work: Path, qemu: bool = True) -> rp.Job:
    by_name = {b.name: b for b in rp.BENCHMARKS}
    bench = dataclasses.replace(by_name["digits"], hidden=16, epochs=1, finetune_epochs=1, max_train=128,
                                max_test=64)
    cfg = rp.Config(benchmarks=(bench,), seeds=(0,), levels=("kp",), qemu=qemu, qemu_only=("kp",), qemu_samples=1,
                    jobs=1)
    return rp.Job(bench, 0, cfg, str(work), False, qemu)


@pytest.fixture(scope="module")
def one_ray():
    """One Ray (one CPU) for the module: run_on_ray uses a Ray it finds and leaves it up, so workers are reused."""
    search.ray_env()
    import ray

    assert search.init_ray(None, 1, log_to_driver=True)
    yield
    ray.shutdown()


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def test_a_missing_cluster_is_one_line(tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():  # a Ray already up would be used instead of the address (one_ray, when run later)
        ray.shutdown()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    res = CliRunner().invoke(rp.main, ["--benchmarks", "digits", "--seeds", "0", "--no-qemu", "--jobs", "2",
                                       "--address", "127.0.0.1:9", "--out", str(tmp_path / "out"), "--work",
                                       str(tmp_path / "work")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("kpgen reproduce: error:")]
    assert len(lines) == 1 and "cannot attach to the Ray cluster at 127.0.0.1:9" in lines[0], res.output
    assert "Traceback" not in res.output and not (tmp_path / "out" / "results.md").exists()


@needs_tools
def test_a_job_on_ray_gives_the_same_numbers_as_in_process(tmp_path, monkeypatch, one_ray):
    direct = rp.run_job(tiny_job(tmp_path / "direct"))

    def not_here(job: rp.Job) -> list[dict]:
        raise AssertionError("the Ray path ran the job in the test's own process")

    monkeypatch.setattr(rp, "run_job", not_here)  # a Ray worker imports the module afresh: the real run_job
    job = tiny_job(tmp_path / "ray")
    on_ray, engine = rp.run_on_ray([job], job.cfg, log=lambda m: None)
    assert engine.startswith("Ray ") and "1 CPUs" in engine and "on 1 node(s)" in engine, engine
    keys = [r["key"] for r in on_ray]
    assert keys == [r["key"] for r in direct] and {"dense", "kp", "prune@kp", "small@kp"} <= set(keys), keys
    kp = on_ray[keys.index("kp")]
    assert kp["float_acc"] > 0 and kp["int8_acc"] > 0 and kp["int8_bytes"] > 0 and kp["instructions"] > 1000, kp
    assert without_timings(on_ray) == without_timings(direct)
    assert (tmp_path / "ray" / "checkpoints" / "digits" / "kp-s0.pt").is_file()


def test_a_failed_job_is_named_with_its_error(tmp_path, capsys, one_ray):
    (tmp_path / "work").write_text("a file where the job wants its checkpoint folder")
    job = tiny_job(tmp_path / "work", qemu=False)
    with pytest.raises(rp.JobsFailed, match=r"^1 of 1 jobs failed: digits seed 0 \((NotADirectoryError|"
                                            r"FileExistsError): .*\); their tracebacks are above"):
        rp.run_on_ray([job], job.cfg, log=lambda m: None)
    err = capsys.readouterr().err
    assert "reproduce: job digits seed 0 failed:" in err, err
    assert 'in run_job' in err and "kept.mkdir(" in err, err  # the worker's traceback


def test_a_job_that_raises_a_user_error_stays_one_line(tmp_path, one_ray):
    job = tiny_job(tmp_path / "work", qemu=False)
    bad = dataclasses.replace(job, bench=dataclasses.replace(job.bench, dataset="no-such-dataset"))
    with pytest.raises(KpgenError, match="no-such-dataset"):
        rp.run_on_ray([bad], job.cfg, log=lambda m: None)
