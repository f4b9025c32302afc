"""The emitted firmware for every board in boards/ compiles with -Wall -Wextra -Wconversion -Wshadow -Werror
-pedantic and links, and the model's deepest call chain (from -fstack-usage and the ELF's call graph) fits the
board's stack. The stack-depth analysis itself (kpgen.target.toolchain.worst_stack) is checked on small graphs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from checkpoints import save, tiny_checkpoint, vectors
from example_counts import finding

from kpgen import KpgenError
from kpgen.pipeline import emit_project
from kpgen.target import toolchain
from kpgen.target.boards import list_boards, load_board
from kpgen.target.toolchain import CallGraph, worst_stack

STRICT = "-Wall -Wextra -Wconversion -Wshadow -Werror -pedantic"
BOARDS = [b.name for b in list_boards()]
needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in (*toolchain.BUILD_TOOLS, toolchain.OBJDUMP)),
    reason="needs arm-none-eabi-gcc, binutils and make",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The tiny two-layer model (dimension-1 factors included) emitted and built for every board, in parallel."""
    base = tmp_path_factory.mktemp("strict")
    ckpt = save(tiny_checkpoint(seed=7), base / "m.pt")
    vec = vectors(base / "v.npz", samples=2, steps=3)
    procs = {}
    for name in BOARDS:
        out = base / name
        emit_project(ckpt, name, out, vectors=vec, samples=2)
        cmd = ["make", "-C", str(out), f"EXTRA_CFLAGS={STRICT}", "WERROR=-Werror"]
        procs[name] = (out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (out, p) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        results[name] = (out, subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


@needs_tools
@pytest.mark.parametrize("board", BOARDS)
def test_emitted_code_is_warning_free(built, board: str) -> None:
    out, res = built[board]
    assert res.returncode == 0, f"{board}: {res.stderr[-3000:]}"
    compiles = [ln for ln in res.stdout.splitlines() if " -c " in ln and ln.rstrip().endswith(".o")]
    assert compiles, res.stdout[-2000:]
    for ln in compiles:  # every source, the model's and the runtime's included, got the strict flags
        if ln.rstrip().endswith("obj/boot2.o"):
            continue  # boot2 is assembly (kpgen's or the Pico SDK's): its rule takes no C flags
        for flag in STRICT.split():
            assert flag in ln.split(), (flag, ln)
    assert " warning: " not in res.stderr
    assert (out / "fw.elf").is_file() and (out / "fw.bin").is_file() and (out / "fw.hex").is_file()


@needs_tools
@pytest.mark.parametrize("board", BOARDS)
def test_model_stack_fits_the_board(built, board: str) -> None:
    out, res = built[board]
    if res.returncode != 0:
        pytest.fail(f"{board} did not build (see test_emitted_code_is_warning_free)")
    b = load_board(board)
    sc = toolchain.check_stack(out / "fw.elf", out / "obj", b, "model")
    assert 0 < sc.bytes <= b.stack_size and sc.limit == b.stack_size
    assert sc.chain[0].startswith("model_") and len(sc.chain) >= 2
    frames = toolchain.stack_usage(out / "obj")
    assert sc.bytes == sum(frames.get(f, 0) for f in sc.chain) or sc.estimated
    per_function = " -> ".join(f"{f} {frames.get(f, 'est.')}" for f in sc.chain)  # -fstack-usage bytes per frame
    finding("stack per board", f"{board} ({b.core}): {sc.bytes} of {b.stack_size} bytes: {per_function}"
            + (f" (estimated from the disassembly: {', '.join(sc.estimated)})" if sc.estimated else ""))


# --------------------------------------------------------------------------- the analysis on small graphs


def graph(calls: dict[str, set[str]], indirect: set[str] = frozenset(), frames: dict[str, int] | None = None):
    return CallGraph({f: frozenset(c) for f, c in calls.items()}, frozenset(indirect), frames or {})


def test_worst_chain_is_the_deepest_sum() -> None:
    g = graph({"m_run": {"step", "fc"}, "step": {"mv", "act"}, "mv": set(), "act": set(), "fc": set()})
    frames = {"m_run": (16, "static"), "step": (96, "static"), "mv": (88, "static"), "act": (200, "static"),
              "fc": (40, "static")}  # fmt: skip
    assert worst_stack(["m_run"], frames, g) == (16 + 96 + 200, ("m_run", "step", "act"), ())


def test_frames_without_stack_usage_come_from_the_disassembly() -> None:
    g = graph({"m_run": {"__aeabi_lmul"}, "__aeabi_lmul": set()}, frames={"__aeabi_lmul": 20})
    assert worst_stack(["m_run"], {"m_run": (8, "static")}, g) == (28, ("m_run", "__aeabi_lmul"), ("__aeabi_lmul",))


def test_bounded_dynamic_frames_count_their_bound() -> None:
    g = graph({"m_run": set()})
    assert worst_stack(["m_run"], {"m_run": (64, "dynamic,bounded")}, g)[0] == 64


def test_recursion_is_refused() -> None:
    g = graph({"m_run": {"a"}, "a": {"b"}, "b": {"a"}})
    with pytest.raises(KpgenError, match=r"recursion a -> b -> a: its stack use has no bound"):
        worst_stack(["m_run"], {}, g)


def test_indirect_calls_are_refused() -> None:
    g = graph({"m_run": {"a"}, "a": set()}, indirect={"a"})
    with pytest.raises(KpgenError, match=r"a calls through a function pointer on the call chain m_run -> a"):
        worst_stack(["m_run"], {}, g)


def test_variable_size_frames_are_refused() -> None:
    g = graph({"m_run": {"a"}, "a": set()})
    with pytest.raises(KpgenError, match=r"a has a variable-size stack frame .* m_run -> a"):
        worst_stack(["m_run"], {"a": (32, "dynamic")}, g)


@needs_tools
def test_stack_check_of_a_firmware_without_the_model(built) -> None:
    """A firmware that never calls the model (so links none of it) has nothing of the model to size."""
    out, res = built["m4"]
    assert res.returncode == 0
    sc = toolchain.check_stack(out / "fw.elf", out / "obj", load_board("m4"), "other")
    assert sc.bytes == 0 and sc.chain == ()


@needs_tools
def test_stack_check_needs_functions(tmp_path: Path) -> None:
    (tmp_path / "d.c").write_text("const int table[4] = {1, 2, 3, 4};\n")
    obj = tmp_path / "d.o"
    subprocess.run([toolchain.CC, "-mcpu=cortex-m4", "-mthumb", "-c", str(tmp_path / "d.c"), "-o", str(obj)],
                   check=True)
    with pytest.raises(KpgenError, match=r"the disassembly of .*d.o lists no functions; build it again"):
        toolchain.check_stack(obj, tmp_path, load_board("m4"), "model")


@needs_tools
def test_disassembly_of_a_non_elf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fw.elf").write_text("not an ELF\n")
    with pytest.raises(KpgenError, match=r"cannot read .*fw.elf: not an ELF file"):
        toolchain.call_graph(tmp_path / "fw.elf")


@needs_tools
def test_call_graph_reads_pushes_and_calls(tmp_path: Path) -> None:
    """Frame estimates from the disassembly agree with -fstack-usage for compiled C (push + sub sp)."""
    (tmp_path / "f.c").write_text(
        "#include <stdint.h>\n"
        "__attribute__((noinline)) int32_t leaf(volatile int32_t *p) { volatile int32_t buf[10]; buf[3] = *p;"
        " return buf[3] + buf[(*p) & 7]; }\n"
        "int32_t top(int32_t x) { volatile int32_t v = x; return leaf(&v) + 1; }\n"
    )  # fmt: skip
    obj = tmp_path / "f.o"
    subprocess.run([toolchain.CC, "-mcpu=cortex-m4", "-mthumb", "-O2", "-fstack-usage", "-c", str(tmp_path / "f.c"),
                    "-o", str(obj)], check=True, cwd=tmp_path)  # fmt: skip
    g = toolchain.call_graph(obj)
    su = toolchain.stack_usage(tmp_path)
    assert "leaf" in g.calls["top"]
    assert g.frames["leaf"] == su["leaf"] and g.frames["top"] == su["top"]
