"""`kpgen search`: budgets parsed, the Pareto front, one-line usage errors, a crashed trial retried, trials on two
Ray nodes, and (the slow one) the CI search whose best.pt emits and runs bit-exact on the Cortex-M4."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.studies import search
from kpgen.target import toolchain

REPO = Path(__file__).resolve().parents[1]
KPGEN = [sys.executable, "-m", "kpgen.cli"]
HAVE_TOOLS = all(shutil.which(t) for t in toolchain.ALL_TOOLS)
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs arm-none-eabi-gcc, make and qemu-system-arm")


def _trial(tid: str, acc: float, instructions: int, flash: int) -> search.Trial:
    return search.Trial(trial_id=tid, model=tid, config={}, status="done", int8_accuracy=acc,
                        instructions=instructions, flash=flash, fits=True)


def test_sizes_and_times_parse_with_units():
    assert search.parse_size("32KiB", "--max-flash") == 32768
    assert search.parse_size("32K", "--max-flash") == 32768
    assert search.parse_size("32KB", "--max-flash") == 32000
    assert search.parse_size("1.5MiB", "--max-flash") == 3 << 19
    assert search.parse_size("4096", "--max-ram") == 4096
    assert search.parse_seconds("5ms", "--max-latency") == pytest.approx(0.005)
    assert search.parse_seconds("250us", "--max-latency") == pytest.approx(250e-6)
    assert search.parse_seconds("2 s", "--max-latency") == 2.0
    for bad in ("32 zB", "-3KiB", "KiB", "0", ""):
        with pytest.raises(KpgenError, match="is not a"):
            search.parse_size(bad, "--max-flash")
    for bad in ("5", "5 hours", "0ms", "-1ms"):
        with pytest.raises(KpgenError, match="is not a positive time"):
            search.parse_seconds(bad, "--max-latency")


def test_pareto_front_keeps_only_undominated_trials():
    a = _trial("a", 0.90, 10_000, 5_000)
    b = _trial("b", 0.95, 20_000, 6_000)  # more accurate, dearer: on the front
    c = _trial("c", 0.90, 12_000, 5_000)  # a's accuracy at more instructions: dominated
    d = _trial("d", 0.80, 9_000, 9_000)  # cheapest in instructions: on the front
    e = _trial("e", 0.90, 10_000, 5_000)  # a's exact point: a stands for both
    f = _trial("f", 0.85, 30_000, 4_000)  # smallest flash: on the front
    front = search.pareto_front([a, b, c, d, e, f])
    assert [t.trial_id for t in front] == ["b", "a", "f", "d"]


def test_budgets_judge_a_trial():
    s = search.Settings(dataset="digits", board="m4", out="/x", max_flash=1000, max_ram=100,
                        max_instructions=5000, max_latency=1e-3, clock_hz=1_000_000)
    assert search.over_budget({"flash": 1000, "ram": 100, "instructions": 5000, "latency_ms": 1.0}, s) == []
    got = search.over_budget({"flash": 1001, "ram": 101, "instructions": 5001, "latency_ms": 1.5}, s)
    assert [g.split()[0] for g in got] == ["flash", "RAM", "instructions", "estimated"]


def _one_line_error(args: list[str], expect: str) -> None:
    res = CliRunner().invoke(main, args, standalone_mode=True)
    err = res.stderr if hasattr(res, "stderr") and res.stderr_bytes is not None else res.output
    assert res.exit_code == 2, res.output
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kpgen: error: "), err
    assert expect in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("args, expect", [
    (["--max-flash", "32 zB"], "--max-flash '32 zB' is not a size"),
    (["--max-ram", "0"], "--max-ram 0 is not a positive size"),
    (["--max-latency", "fast"], "--max-latency 'fast' is not a positive time"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--board", "nrf52840-dk"], "is real hardware that QEMU does not emulate"),
    (["--from", str(REPO / "examples" / "digits-fastrnn.pt"), "--dataset", "japanesevowels"],
     "pass the --dataset it was trained on"),
    (["--resume"], "holds no search to resume"),
], ids=["size", "zero", "latency", "dataset", "real-board", "from-dataset", "resume-nothing"])
def test_bad_options_are_one_line(tmp_path, args, expect):
    base = {"--dataset": "digits", "--board": "m4", "-o": str(tmp_path / "out")}
    for k in ("--dataset", "--board"):
        if k in args:
            base.pop(k)
    _one_line_error(["search", *[x for kv in base.items() for x in kv], *args], expect)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_used_directory_needs_resume(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    _one_line_error(["search", "--dataset", "digits", "--board", "m4", "-o", str(tmp_path / "out")],
                    "exists and is not empty; pass --resume")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_latency_needs_a_clock(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "board_clock", lambda board: None)
    s = search.Settings(dataset="digits", board="m4", out=str(tmp_path / "o"), max_latency=0.005)
    with pytest.raises(KpgenError, match=r"gives no core clock in its board\.toml"):
        search.check_settings(s)
    assert search.check_settings(search.Settings(**{**s.__dict__, "clock_hz": 10**6})).clock_hz == 10**6


def test_a_missing_search_extra_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    s = search.Settings(dataset="digits", board="m4", out=str(tmp_path / "o"))
    with pytest.raises(KpgenError, match=r"^kpgen search needs the 'search' extra: pip install 'kpgen\[search\]'$"):
        search.run_search(s, log=lambda m: None)
    assert not (tmp_path / "o").exists()


def test_an_unknown_searcher_is_refused(tmp_path):
    with pytest.raises(KpgenError, match="--searcher 'grid' is not known; use random or tpe"):
        search.check_settings(search.Settings(dataset="digits", board="m4", out=str(tmp_path), searcher="grid"))


def test_a_missing_cluster_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    s = search.Settings(dataset="digits", board="m4", out=str(tmp_path / "o"), trials=1, epochs=1)
    with pytest.raises(KpgenError, match=r"cannot attach to the Ray cluster at 127\.0\.0\.1:9"):
        search.run_search(s, address="127.0.0.1:9", log=lambda m: None)


# ------------------------------------------------------------------------------------------ with Ray


def test_budgets_nothing_fits_is_one_line_after_the_report(tmp_path):
    """Every trial over a 2 KiB flash budget: refused before training, reported, then one line and exit 2."""
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    res = subprocess.run([*KPGEN, "search", "--dataset", "digits", "--board", "m4", "--max-flash", "2KiB",
                          "--trials", "2", "--epochs", "1", "--workers", "1", "-o", str(out)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith("kpgen: error: none of the 2 trials met the budgets")
    assert "Traceback" not in res.stderr
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["status"] for r in rows] == ["over budget"] * 2 and all(int(r["flash"]) > 2048 for r in rows)
    assert not (out / "best.pt").exists() and (out / "report.md").is_file()


def flaky_trial(config: dict, settings: dict) -> None:
    """The real trainable, but the first attempt of trial 0 (its config's lr is the lowest) crashes."""
    marker = Path(settings["out"]) / "crashed-once"
    if config["lr"] == min(FLAKY_LRS) and not marker.exists():
        marker.write_text("x")
        raise RuntimeError("simulated crash of a trial")
    search.run_trial(config, settings)


FLAKY_LRS = (0.01, 0.02)


@needs_tools
def test_a_crashed_trial_is_retried_and_recorded(tmp_path, monkeypatch):
    import ray.cloudpickle
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(search, "space", lambda s: {"lr": tune.grid_search(list(FLAKY_LRS)), "epochs": 1,
                                                    "cell": "gru", "hidden": 16, "layers": 1, "method": "kp",
                                                    "dense_rows": 1})
    s = search.Settings(dataset="digits", board="m4", out=str(tmp_path / "out"), trials=1, epochs=1, workers=1)
    summary = search.run_search(s, trainable=flaky_trial, log=lambda m: None)
    assert (tmp_path / "out" / "crashed-once").exists()
    assert len(summary.trials) == 2
    retried = [t for t in summary.trials if t.failures]
    assert len(retried) == 1 and retried[0].status == "done"
    assert "simulated crash of a trial" in retried[0].error
    assert all(t.int8_accuracy is not None and t.instructions for t in summary.trials)
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert sorted(r["failures"] for r in rows) == ["0", "1"]
    assert "1 failed once and succeeded on retry" in (tmp_path / "out" / "report.md").read_text()


def test_qat_is_a_dimension_where_the_method_has_it():
    s = search.Settings(dataset="digits", board="m4", out="/x", epochs=20)
    assert search.space(s)["qat"].categories == [False, True]
    base = {"cell": "gru", "hidden": 16, "layers": 1, "dense_rows": 2, "qat": True}
    assert search.describe({**base, "method": "kp"}, None) == "gru H 16 x1, kp +QAT"
    assert search.describe({**base, "method": "hkp"}, None) == "gru H 16 x1, hkp 2 dense rows +QAT"
    assert search.describe({**base, "method": "dense"}, None) == "gru H 16 x1, dense"  # no QAT phase there
    assert search.describe({**base, "method": "kp", "qat": False}, None) == "gru H 16 x1, kp"
    assert not search.uses_qat({"method": "kp"})  # a study saved before QAT was a dimension
    assert [search.qat_epochs(e) for e in (1, 3, 8, 20, 60)] == [1, 1, 2, 5, 5]


@needs_tools
def test_a_qat_trial_runs_a_qat_phase(tmp_path, monkeypatch):
    """The same KP network with QAT off and on: both measured; only the QAT one carries kpgen.train.qat's report."""
    from ray import tune

    from kpgen.frontend.load import read_raw

    monkeypatch.setattr(search, "space", lambda s: {"lr": 0.02, "epochs": 1, "cell": "gru", "hidden": 16,
                                                    "layers": 1, "method": "kp", "dense_rows": 1,
                                                    "qat": tune.grid_search([False, True])})
    s = search.Settings(dataset="digits", board="m4", out=str(tmp_path / "out"), trials=1, epochs=1, workers=1)
    summary = search.run_search(s, log=lambda m: None)
    by_model = {t.model: t for t in summary.trials}
    assert sorted(by_model) == ["gru H 16 x1, kp", "gru H 16 x1, kp +QAT"], by_model
    metas = {}
    for model, t in by_model.items():
        assert t.status == "done" and t.int8_accuracy is not None and t.instructions and t.checkpoint, t
        ckpt = read_raw(Path(t.checkpoint))
        assert isinstance(ckpt, dict)
        metas[model] = ckpt["meta"]
        assert ("qat" in metas[model]) == model.endswith("+QAT"), metas[model].keys()
    qat = metas["gru H 16 x1, kp +QAT"]["qat"]
    assert qat["epochs"] == 1 and 0.0 <= qat["int8_accuracy"] <= 1.0, qat


@needs_tools
def test_trials_run_on_two_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    search.ray_env()
    from ray.cluster_utils import Cluster

    mem: dict[str, Any] = {"memory": 1 << 30, "object_store_memory": 100 << 20, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, **mem})
    try:
        cluster.add_node(num_cpus=1, **mem)
        cluster.wait_for_nodes()
        s = search.Settings(dataset="digits", board="m4", out=str(tmp_path / "out"), trials=4, epochs=1, seed=3)
        summary = search.run_search(s, address=cluster.address, log=lambda m: None)
    finally:
        pids = [p.process.pid for node in cluster.list_all_nodes() for ps in node.all_processes.values() for p in ps]
        cluster.shutdown()
    assert len(summary.nodes) == 2, [t.node for t in summary.trials]
    assert all(t.node in summary.nodes for t in summary.trials)
    for pid in pids:  # every process of both nodes is gone
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


# `kpgen search` whose trainable reports once, leaves a marker and then waits: Ctrl-C always finds a trial running
# and Tune's loop up, however loaded the machine (the marker is written by the trial itself, not synced by Tune)
STALLED_SEARCH = """
import time
from pathlib import Path
from kpgen.cli import main
from kpgen.studies import search

def run_trial(config, settings):  # the real one's name: Tuner.restore checks it
    from ray import tune
    tune.report({"score": 0.0, "status": "training"})  # returns once Tune has taken the result
    Path(settings["out"]).with_name("reported").write_text("x")  # beside -o
    time.sleep(900)  # until Ctrl-C ends the study (and its workers)

search.run_trial = run_trial
main()
"""


@needs_tools
def test_ctrl_c_saves_the_study_and_resume_finishes_it(tmp_path):
    """SIGINT while a trial runs (it has reported): exit 1 with one line naming --resume, no outputs but the
    study; then --resume (the real trials) runs the trials left and writes everything."""
    out = tmp_path / "out"
    reported = tmp_path / "reported"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    args = [sys.executable, "-c", STALLED_SEARCH, "search", "--dataset", "digits", "--board", "m4", "--max-flash",
            "24KiB", "--trials", "3", "--epochs", "2", "--workers", "1", "--seed", "5", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        hang = time.monotonic() + 1800  # a guard against a hung Ray only: nothing here races with a clock
        while not reported.exists():  # the trial never ends by itself: no race with the study's end
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < hang, "no trial reported in 30 minutes"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err[-3000:]
    assert "interrupted" in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"kpgen: error: kpgen search interrupted; its study is saved: continue it "
                                            f"with `kpgen search --resume -o {out}`")
    assert not (out / "trials.csv").exists() and (out / search.STUDY).is_dir()
    res = subprocess.run([*KPGEN, "search", "--dataset", "digits", "--board", "m4", "--resume", "-o", str(out)],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode in (0, 2), res.stderr[-2000:]  # 2: no trial met the budget (one line, outputs written)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 3 and all(r["status"] for r in rows), rows
    assert all(r["node"] for r in rows), rows  # every last result is the real trial's: the stalled one ran again


@pytest.mark.slow
@needs_tools
def test_ci_search_finds_a_model_that_runs_bit_exact(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    res = subprocess.run([*KPGEN, "search", "--dataset", "digits", "--board", "m4", "--max-flash", "24KiB",
                          "--trials", "6", "--epochs", "3", "-o", str(out)], capture_output=True, text=True,
                         timeout=900, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("pareto.csv", "pareto.png", "best.pt", "report.md", "trials.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / search.STUDY).is_dir()
    front = list(csv.DictReader((out / "pareto.csv").open()))
    assert front and all(r["verified_bit_exact"] == "yes" and int(r["flash"]) <= 24 * 1024 for r in front)
    assert all(r["instructions"] == r["verified_instructions"] for r in front)
    trials = list(csv.DictReader((out / "trials.csv").open()))
    assert len(trials) == 6
    subprocess.run([*KPGEN, "emit", "best.pt", "--board", "m4", "-o", str(tmp_path / "m4")], cwd=out, check=True,
                   capture_output=True, timeout=300)
    run = subprocess.run([*KPGEN, "run", str(tmp_path / "m4")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "bit-exact" in run.stdout, run.stdout[-2000:]
    best = front[0]
    assert f"instructions per inference {int(best['instructions']):,}" in " ".join(run.stdout.split())
