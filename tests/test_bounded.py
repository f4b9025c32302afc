"""Child processes are bounded and killed on every exit path, the trace is counted as it streams, and emitted
builds work in any directory name without running anything from it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoints import save, tiny_checkpoint, vectors
from click.testing import CliRunner
from firmware import build_fixture

from kpgen import KpgenError
from kpgen.cli import main
from kpgen.target import elf, proc, qemu, toolchain
from kpgen.target.boards import load_board

HAVE_TOOLS = all(shutil.which(t) for t in (*toolchain.ALL_TOOLS, toolchain.OBJDUMP))
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs arm-none-eabi-gcc, make and qemu-system-arm")
RUNAWAY = Path(__file__).parent / "fixtures" / "runaway" / "main.c"

pytestmark = [needs_tools, pytest.mark.qemu]


@pytest.fixture(scope="module")
def board():
    return load_board("m4")


@pytest.fixture(scope="module")
def fw(board, tmp_path_factory):
    return build_fixture(board, RUNAWAY, tmp_path_factory.mktemp("runaway"))


def _qemu_pids(marker: str) -> list[int]:
    """PIDs of qemu-system-arm processes whose command line mentions marker (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-arm") and any(marker.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------------------------- the helper


def test_timeout_kills_the_whole_group(tmp_path):
    """A child that starts its own child: both are gone after the timeout."""
    pidfile = tmp_path / "pid"
    done = proc.run(["sh", "-c", f"sleep 60 & echo $! > '{pidfile}'; wait"], timeout=0.5)
    assert done.timed_out and done.returncode is None
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break  # gone
        if state == "Z":
            break  # killed, waiting for init to reap it
        time.sleep(0.05)
    else:
        pytest.fail(f"the grandchild {grandchild} survived its group's timeout")


def test_output_cap_stops_a_child():
    done = proc.run(["yes"], timeout=20, cap=10_000)
    assert done.overflowed and len(done.stdout) == 10_000 and done.returncode is None and not done.timed_out


def test_missing_program_is_one_line():
    with pytest.raises(KpgenError, match=r"cannot start no-such-tool-kpgen \(No such file or directory\)"):
        proc.run(["no-such-tool-kpgen"], timeout=5)


def test_tool_failure_is_one_line(tmp_path):
    with pytest.raises(KpgenError, match=r"^cannot wait: sleep took longer than 0.3 s; check the file and the tool$"):
        proc.tool(["sleep", "5"], "wait", timeout=0.3)
    with pytest.raises(KpgenError, match=r"^cannot read zeros: head printed more than 1,000 bytes; check the file$"):
        proc.tool(["head", "-c", "5000", "/dev/zero"], "read zeros", cap=1000)
    (tmp_path / "fw.elf").write_bytes(b"\x7fELF but not really")
    with pytest.raises(KpgenError, match=r"^cannot disassemble x: .*; build it again$"):
        proc.tool([elf.OBJDUMP, "-d", str(tmp_path / "fw.elf")], "disassemble x")
    with pytest.raises(KpgenError, match=r"^firmware .*nothing.elf not found; build it first$"):
        elf.sizes(tmp_path / "nothing.elf")


def test_build_timeout_is_one_line(tmp_path):
    (tmp_path / "Makefile").write_text("all:\n\tsleep 30\n")
    start = time.monotonic()
    with pytest.raises(KpgenError, match=r"^firmware build in .* took longer than 0.5 s and was stopped; build it"):
        toolchain.build(tmp_path, timeout=0.5)
    assert time.monotonic() - start < 10


# --------------------------------------------------------------------------------------------- firmware runs


def test_firmware_that_prints_forever_is_capped(fw, board):
    res = qemu.run(fw.elf, board, timeout=60, args=["flood"], cap=200_000)
    assert res.overflowed and not res.timed_out and res.exit_code is None
    assert len(res.stdout) <= 200_000 and res.stdout.startswith("line 0 of")
    assert res.problem == "the firmware printed more than 200,000 bytes and was stopped"


def test_hang_inside_profile_window_is_a_failed_run(fw, board, tmp_path):
    with pytest.raises(qemu.ProfileFailed, match="did not finish within the timeout") as e:
        qemu.count_instructions(fw.elf, board, args=["profile-hang"], timeout=2, trace_dir=tmp_path)
    assert e.value.run.timed_out
    assert list(tmp_path.iterdir()) == [] and not _qemu_pids(str(fw.elf))


def test_trace_cap_stops_the_profiled_run(fw, board):
    with pytest.raises(qemu.ProfileFailed, match="traced more than 100,000 bytes"):
        qemu.count_instructions(fw.elf, board, args=["profile-hang"], timeout=30, trace_cap=100_000)


def test_lockup_is_named():
    res = qemu.RunResult(stdout="", exit_code=-6, timed_out=False, fault_pc=None, seconds=0.1)
    assert res.problem is not None and res.problem.startswith("lockup")
    assert qemu.RunResult("", 134, False, None, 0.1).lockup


def test_streamed_count_equals_a_count_of_the_written_trace(fw, board, tmp_path):
    """The streamed count against QEMU writing the whole trace to a file, counted here line by line."""
    n = 300
    prof = qemu.count_instructions(fw.elf, board, args=["spin", str(n)], timeout=30)
    trace = tmp_path / "trace.log"
    cmd = qemu.qemu_command(fw.elf, board, ["spin", str(n)])
    cmd[1:1] = ["-singlestep", "-d", "nochain,exec", "-D", str(trace)]
    assert proc.run(cmd, timeout=30).returncode == 0
    syms = {name: addr for addr, _, name in toolchain.symbols(fw.elf)}
    begin, end = syms[qemu.PROFILE_BEGIN], syms[qemu.PROFILE_END]
    pcs = [int(m.group(1), 16)
           for m in re.finditer(r"^Trace [^\[]*\[[0-9a-f]+/([0-9a-f]+)/", trace.read_text(), re.MULTILINE)]
    window = pcs[pcs.index(begin) : pcs.index(end)]
    assert prof.total == len(window) > 3 * n
    assert prof.per_pc == {pc: window.count(pc) for pc in set(window)}


def test_one_disassembly_per_elf(fw, monkeypatch):
    """The call graph (stack check) and the profile's instructions come from one objdump run."""
    elf._dis_cache.clear()
    calls = []
    real = proc.tool
    monkeypatch.setattr(proc, "tool", lambda cmd, *a, **k: calls.append(cmd) or real(cmd, *a, **k))
    toolchain.call_graph(fw.elf)
    qemu.disassemble(fw.elf)
    assert len(calls) == 1 and calls[0][0] == elf.OBJDUMP


# --------------------------------------------------------------------------------------------- signals


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("proj")
    vec = vectors(base / "v.npz")
    res = CliRunner().invoke(main, ["emit", str(save(tiny_checkpoint(), base / "m.pt")), "--board", "m4", "-o",
                                    str(base / "m4"), "--vectors", str(vec), "--samples", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return base / "m4"


def _hanging_copy(project: Path, dest: Path) -> Path:
    shutil.copytree(project, dest)
    main_c = dest / "main.c"
    text = main_c.read_text()
    m = re.search(r"int main\(void\)\s*\{[^\n]*\n", text)
    assert m
    hang = "    static volatile int hang = 1;\n    while (hang) {\n    }\n"
    main_c.write_text(text[: m.end()] + hang + text[m.end() :])
    return dest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_during_run_kills_qemu(project, tmp_path, sig):
    fw = _hanging_copy(project, tmp_path / f"sig-{sig.name}")
    child = subprocess.Popen([sys.executable, "-m", "kpgen", "run", str(fw), "--timeout", "120"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _qemu_pids(str(fw)) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
        assert _qemu_pids(str(fw)), "QEMU never started"
        child.send_signal(sig)
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 1, err
    assert err == f"kpgen: error: kpgen run stopped by {sig.name}; its child processes were killed\n"
    time.sleep(0.2)
    assert _qemu_pids(str(fw)) == []


# --------------------------------------------------------------------------------------------- path names

NASTY = ["with space", "$(touch pwned)", "`touch pwned`", "q'uote\"d", "semi;touch pwned", "ünï cödé", "a=b,c#d"]


@pytest.mark.parametrize("name", NASTY)
def test_emit_and_build_in_any_directory(project, tmp_path, name, monkeypatch):
    """The name in the parent directory and in -o: kpgen's build and a user's `make` both work, and run nothing."""
    monkeypatch.chdir(tmp_path)
    parent = tmp_path / name
    parent.mkdir()
    out = parent / f"out {name}"
    shutil.copytree(project, out)
    built = toolchain.build(out)
    assert built.elf.is_file() and built.sizes["text"] > 0
    subprocess.run(["make", "clean"], cwd=out, check=True, capture_output=True)
    user = subprocess.run(["make"], cwd=out, capture_output=True, text=True, check=False)
    assert user.returncode == 0, user.stderr
    for where in (tmp_path, parent, out):
        assert not (where / "pwned").exists()


@pytest.mark.parametrize("name", ["$(touch pwned) `touch pwned` x;y 'q\" ü"])
def test_run_under_qemu_in_any_directory(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / name
    vec = vectors(tmp_path / "v.npz")
    ck = save(tiny_checkpoint(), tmp_path / "m.pt")
    res = CliRunner().invoke(main, ["emit", str(ck), "--board", "m4", "-o", str(base / name), "--vectors", str(vec),
                                    "--samples", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["run", str(base / name)])
    assert res.exit_code == 0, res.output
    assert "PASS: bit-exact" in res.stdout
    assert not any(p.name == "pwned" for p in tmp_path.rglob("pwned"))


def test_lib_and_cmake_builds_in_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "$(touch pwned) `touch pwned` x;y 'q\" ü"
    ck = save(tiny_checkpoint(), tmp_path / "m.pt")
    out = tmp_path / name / "lib"
    vec = vectors(tmp_path / "v.npz")
    res = CliRunner().invoke(main, ["emit", str(ck), "--board", "m4", "-o", str(out), "--target", "lib",
                                    "--vectors", str(vec), "--samples", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    done = proc.run(["make"], cwd=out, timeout=600)
    assert done.returncode == 0, done.err
    # CMake itself writes paths unescaped into its generated files and splits them at ';': a '"' or ';' in the
    # directory name breaks any CMake project, so the CMake build is checked with the other characters.
    cm = tmp_path / "$(touch pwned) `touch pwned` it's ü" / "lib"
    shutil.copytree(out, cm)
    build = cm / "build dir"
    for cmd in (["cmake", "-S", ".", "-B", str(build)], ["cmake", "--build", str(build)]):
        done = proc.run(cmd, cwd=cm, timeout=600)
        assert done.returncode == 0, done.out + done.err
    assert (build / "libmodel.a").is_file()
    assert not any(p.name == "pwned" for p in tmp_path.rglob("pwned"))
