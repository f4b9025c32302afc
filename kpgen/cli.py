"""kpgen's command line: a thin click layer over the stages."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from kpgen import KpgenError, __version__, escape
from kpgen.cells import NAMES as CELL_NAMES


def _fail(message: str) -> None:
    """The one line a user's mistake gets: every control character escaped, so no text can forge a second line."""
    click.echo(f"kpgen: error: {escape(message)}", err=True)
    sys.exit(2)


NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096


class _PathType(click.Path):
    """A path option or argument checked before use: component and total lengths, and a stat() that fails for
    any reason but 'does not exist' (a directory that cannot be searched, a symlink loop) is a usage error."""

    def convert(self, value, param, ctx):
        if "\0" in os.fsdecode(value if isinstance(value, (str, bytes)) else str(value)):
            self.fail("the path contains a NUL character, which no file name may hold", param, ctx)
        path = super().convert(value, param, ctx)
        raw = os.fsencode(path)
        long = [c for c in raw.split(b"/") if len(c) > NAME_MAX]
        if long:
            self.fail(f"{escape(os.fsdecode(long[0][:40]))}... is a path component of {len(long[0])} bytes, more than "
                      f"the {NAME_MAX} a file name may have; use a shorter name", param, ctx)
        if len(raw) >= PATH_MAX:
            self.fail(f"the path is {len(raw)} bytes long, more than the system's {PATH_MAX - 1}; use a shorter one",
                      param, ctx)
        try:
            os.stat(raw)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            self.fail(f"{escape(str(path))}: {e.strerror or e}; check the path and its directories' permissions",
                      param, ctx)
        return path


C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern float for goto if
    inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void
    volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert
    _Thread_local alignas alignof bool constexpr false nullptr static_assert thread_local true typeof typeof_unqual
    asm""".split())
# Files a project includes by name (-I.), so a model file of the same name would shadow them
C_HEADERS = frozenset("""assert complex ctype errno fenv float inttypes iso646 limits locale math setjmp signal
    stdalign stdarg stdatomic stdbool stddef stdint stdio stdlib stdnoreturn string tgmath threads time uchar wchar
    wctype unistd arm_acle arm_mve arm_math""".split())
GENERATED = frozenset("main vectors link boot2_placeholder startup all clean install test help package".split())


def _reserved_names() -> frozenset[str]:
    """File stems kpgen copies into every project (runtime_c/, boards/common/): a model name must not reuse them."""
    from kpgen._data import data_dir

    stems = {p.stem for d in (data_dir("runtime_c"), data_dir("boards") / "common") if d.is_dir() for p in d.iterdir()}
    return frozenset(stems) | GENERATED | C_HEADERS


def _c_name(ctx, param, value: str) -> str:
    """--name: a C identifier usable as a file name, a header guard and a build target."""
    if not value.isidentifier() or not value.isascii() or len(value) > 63:
        raise click.BadParameter(f"{escape(value)!r} is not a C identifier of at most 63 characters; use letters, "
                                 "digits and underscores, starting with a letter")
    if value.startswith("_") or value in C_KEYWORDS or value in _reserved_names():
        why = ("names starting with _ are reserved in C" if value.startswith("_") else
               "it is a C keyword" if value in C_KEYWORDS else "a file of that name is already part of the project "
               "or of the C library")
        raise click.BadParameter(f"{value!r} is reserved ({why}); choose another name, e.g. my_model")
    return value


def _path(**kw) -> _PathType:
    return _PathType(path_type=Path, **kw)


class _Seconds(click.ParamType):
    """A time limit in seconds: a finite number from 1 to a week (nan, inf and 1e308 overflow timers)."""

    name = "seconds"
    MAX = 7 * 24 * 3600.0

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{escape(str(value))!r} is not a number of seconds", param, ctx)
        if not math.isfinite(v) or not 1 <= v <= self.MAX:
            self.fail(f"{escape(str(value))} is not a number of seconds from 1 to {self.MAX:.0f} (a week)", param, ctx)
        return v


@contextmanager
def _stoppable(what: str) -> Iterator[None]:
    """SIGTERM, SIGHUP or SIGINT during `what` kill its children (QEMU, gdb, make) and exit 1 with one line."""
    from kpgen.target import proc

    try:
        with proc.stop_on_signals():
            yield
    except proc.Stopped as e:
        click.echo(f"kpgen: error: {what} stopped by {e}; its child processes were killed", err=True)
        sys.exit(1)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _Group(click.Group):
    """Turns a KpgenError anywhere below, and click's own usage errors, into one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KpgenError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted")

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as e:  # bare `kpgen`: the help, as click prints it
            click.echo(e.format_message())
            sys.exit(0)
        except click.UsageError as e:  # click would print usage, a hint and the error on three lines
            where = e.ctx.command_path if e.ctx is not None else "kpgen"
            _fail(f"{e.format_message().rstrip('.')}; see `{where} --help`")
        except click.ClickException as e:
            _fail(e.format_message())
        except click.Abort:
            _fail("interrupted")
        except BrokenPipeError:  # `kpgen boards | head`: the reader left, nothing to report
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpgen")
def main() -> None:
    """Kronecker-compressed RNNs to bit-exact int8 C for Cortex-M, verified under QEMU.

    \b
    Typical use:
      kpgen train -o model.pt
      kpgen emit model.pt --board m4 -o build/m4
      kpgen run build/m4
    """


def _factors(ctx, param, value):
    if value is None:
        return None
    from kpgen.train.plan import parse_shapes

    try:
        return parse_shapes(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


_FACTOR_HELP = ("any number of factors, F1 first, or 'dense'. Default: the demo's shapes where they make the matrix, "
                "else the planner's first 2-factor choice: highest rank bound, then cheapest (`kpgen plan`)")


def _qat_options(f):
    """--qat, --qat-epochs, --qat-lr: the quantization-aware phase after float training (kpgen.train.qat)."""
    f = click.option("--qat-lr", type=click.FloatRange(0, min_open=True), default=None,
                     help="Peak learning rate of the QAT phase  [default: --lr / 10]")(f)
    f = click.option("--qat-epochs", type=click.IntRange(1), default=5, show_default=True,
                     help="Epochs of the QAT phase (with --qat).")(f)
    return click.option("--qat", is_flag=True,
                        help="Then fine-tune with quantization-aware training: the forward pass computes kpgen's "
                             "integer model exactly (docs/quantization.md); prints how often it and the golden "
                             "int8 model disagree on the test split.")(f)


@main.command()
@click.option("-o", "--out", "out", type=_path(), default=Path("model.pt"), show_default=True,
              help="Checkpoint to write.")
@click.option("--dataset", default="mnist", show_default=True, help="Training data (shipped inside packages).")
@click.option("--data", "data_file", type=_path(), default=None,
              help="Your own training data instead (.npz or .csv: x [samples, steps, features], y; docs/byom.md).")
@click.option("--test", "test_file", type=_path(), default=None,
              help="Held-out data for --data (same format)  [default: a seeded 20% of --data]")
@click.option("--cell", type=click.Choice(list(CELL_NAMES)), default="lstm", show_default=True,
              help="Recurrent cell; Wx and Wh have G*H rows, G = 4 (lstm), 3 (gru), 1 (fastrnn, fastgrnn, rnn, "
                   "rnn-relu). rnn and rnn-relu: torch.nn.RNN with tanh or relu.")
@click.option("--bidirectional", is_flag=True, help="A forward and a backward layer each; the head reads both.")
@click.option("--hidden", "hidden_size", type=click.IntRange(1), default=128, show_default=True,
              help="Hidden units H (per direction).")
@click.option("--method", type=click.Choice(["kp", "hkp", "dense"]), default="kp", show_default=True,
              help="Matrices: kp (Kronecker products), hkp (--dense-rows rows dense, the rest Kronecker), "
                   "dense (uncompressed baseline).")
@click.option("--dense-rows", type=click.IntRange(1), default=None,
              help="hkp: rows kept dense in every matrix (the factors then make the other G*H - R rows); where "
                   "they go: --hkp-rows.")
@click.option("--hkp-rows", type=click.Choice(["auto", "gates", "top"]), default="auto", show_default=True,
              help="hkp: the dense rows spread over the gates (R/G of each, where the G gates divide R) or at the "
                   "top of each matrix; auto: gates for the LSTM, top for the others (docs/compression.md).")
@click.option("--wx-factors", callback=_factors, default="32x2,16x14", show_default=True,
              help="Shapes of the factors of Wx = F1 (x) F2 (x) ... (G*H x inputs): " + _FACTOR_HELP + ".")
@click.option("--wh-factors", callback=_factors, default="32x8,16x16", show_default=True,
              help="Shapes of the factors of Wh (G*H x H): " + _FACTOR_HELP + ".")
@click.option("--layers", "num_layers", type=click.IntRange(1), default=1, show_default=True,
              help="Stacked layers (layers after the first take Wh's shapes for Wx too).")
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.02, show_default=True,
              help="Peak learning rate (AdamW, warm-up then cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (data split and weights).")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@_qat_options
@click.pass_context
def train(ctx: click.Context, out: Path, force: bool, method: str, dense_rows: int | None, hkp_rows: str,
          data_file: Path | None, test_file: Path | None, qat: bool, **cfg) -> None:
    """Train a recurrent classifier on DATASET, calibrate it, and write a checkpoint (docs/checkpoint.md).

    The defaults are the demo's KP-LSTM: about 1.5 minutes on 2 CPU cores. Any other cell, bidirectional
    layers, more than two factors, HKP or dense matrices give the training-side checkpoint variant
    (docs/compression.md).
    """
    from click.core import ParameterSource

    from kpgen.frontend import datasets
    from kpgen.train import DEFAULT_CONFIG, save_checkpoint, train_model
    from kpgen.train.plan import model_matrix_counts, train_specs

    if out.exists() and not force:
        raise KpgenError(f"{out} exists; remove it or pass --force to replace it")
    given = {k: None if ctx.get_parameter_source(k) == ParameterSource.DEFAULT else cfg[k]
             for k in ("wx_factors", "wh_factors")}
    if test_file is not None and data_file is None:
        raise KpgenError("--test goes with --data (your own training data); give both, or neither")
    if data_file is not None:
        if ctx.get_parameter_source("dataset") != ParameterSource.DEFAULT:
            raise KpgenError("give --dataset NAME or --data FILE, not both")
        from kpgen.frontend.userdata import load_user_data, to_split

        held = None if test_file is None else load_user_data(test_file)
        cfg["split"] = to_split(load_user_data(data_file), held, cfg["seed"])
        cfg["dataset"] = data_file.name
        inputs = cfg["split"].num_features
    else:
        inputs = datasets.load(cfg["dataset"], seed=cfg["seed"]).num_features
    wx, wh = train_specs(
        cfg["cell"], inputs, cfg["hidden_size"], method, given["wx_factors"], given["wh_factors"], dense_rows,
        preferred=(DEFAULT_CONFIG["wx_factors"], DEFAULT_CONFIG["wh_factors"]),
        context=f" with --hidden {cfg['hidden_size']} over the {inputs} inputs of {cfg['dataset']}",
        hkp_rows=hkp_rows,
    )
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    for choice in (wx, wh):
        log(choice.describe())
    cfg.update(wx_factors=wx.spec, wh_factors=wh.spec)
    if not qat:
        cfg["qat_epochs"] = 0
    ckpt = train_model(**cfg, log=log)
    if data_file is not None:  # not a built-in dataset: emit takes the data with --data / --test
        ckpt["meta"]["data_file"] = ckpt["meta"].pop("dataset")
    save_checkpoint(ckpt, out)
    arch, meta = ckpt["arch"], ckpt["meta"]
    specs = [arch.get("wx_specs", arch.get("wx_factors")), arch.get("wh_specs", arch.get("wh_factors"))]
    dense, kept = model_matrix_counts(arch["cell"], arch["input_size"], arch["hidden_size"], arch["num_layers"],
                                      cfg["bidirectional"], *specs)
    what = f"{arch['cell']}{', bidirectional' if cfg['bidirectional'] else ''}, {method}"
    acc = meta.get("float_test_accuracy")
    click.echo(f"wrote {escape(str(out))} ({what}: matrices {dense:,} -> {kept:,} parameters, {dense / kept:.2f}x; "
               f"float test accuracy {100 * acc:.2f}%)")


@main.command()
@click.argument("checkpoint", type=_path())
@click.option("--board", required=True, help="Board definition from boards/ (see `kpgen boards`).")
@click.option("-o", "--out", "out", type=_path(), default=None,
              help="Output directory  [default: build/<board>]")
@click.option("--name", default="model", show_default=True, callback=_c_name,
              help="C name prefix of the model's API (a C identifier, not a keyword or a runtime file's name).")
@click.option("--samples", type=click.IntRange(1), default=50, show_default=True,
              help="Test sequences embedded in the firmware and checked bit for bit.")
@click.option("--vectors", type=_path(), default=None,
              help="Test inputs as .npz: x [samples, steps, features] float, optional y labels. "
                   "Default: the test split of the checkpoint's dataset.")
@click.option("--data", "data_file", type=_path(), default=None,
              help="Your data (.npz or .csv; docs/byom.md): calibrates a plain PyTorch state dict CHECKPOINT, and "
                   "its logits (your model's outputs) are checked against kpgen's reading before anything is written.")
@click.option("--test", "test_file", type=_path(), default=None,
              help="Held-out data (same format) for the accuracy and the test vectors  [default: --vectors, else "
                   "--data, else the checkpoint's dataset]")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--target", type=click.Choice(["firmware", "lib", "validate"]), default="firmware", show_default=True,
              help="firmware: the self-checking test firmware; lib: the model as a static library (no main); "
                   "validate: a firmware that takes test sequences over the UART for `kpgen validate`.")
@click.option("--console", type=click.Choice(["uart", "semihosting"]), default=None,
              help="Where the firmware's output goes: the board's UART (no debugger needed; docs/validate.md) or "
                   "semihosting (through QEMU or an attached debugger).  [default: uart where the board has one]")
@click.option("--act-table", type=click.Choice(["full", "interp", "interp128"]), default=None,
              help="Sigmoid and tanh tables: full (1024 entries, one look-up), interp (257 knots, linear "
                   "interpolation: 4x smaller, 20-30x more accurate, about 6 instructions more per value) or "
                   "interp128 (129 knots: 8x smaller, 5-9x more accurate).  "
                   "[default: the board's act_table, else full]")
@click.option("--max-steps", type=click.IntRange(1, 1 << 20), default=None,
              help="Longest sequence a model with a bidirectional layer accepts (MODEL_MAX_STEPS; its arena keeps "
                   "every step)  [default: the training length or the test vectors' length, whichever is larger]")
@click.option("--bias-bits", type=click.Choice(["auto", "16", "32"]), default="auto", show_default=True,
              help="Storage of the gate biases in flash: auto (int16 when every value fits, else int32), 16 (an "
                   "error if one does not fit) or 32. The same values and results either way.")
def emit(checkpoint: Path, board: str, out: Path | None, name: str, samples: int, vectors: Path | None,
         force: bool, target: str, console: str | None, act_table: str | None, data_file: Path | None = None,
         test_file: Path | None = None, max_steps: int | None = None, bias_bits: str = "auto") -> None:
    """Quantize CHECKPOINT (a kpgen checkpoint, or a PyTorch state dict with --data) to int8 and write C sources,
    Makefile and CMakeLists.txt for BOARD."""
    from kpgen.pipeline import emit_project

    out = out if out is not None else Path("build") / board
    m = emit_project(checkpoint, board, out, name=name, samples=samples, vectors=vectors, force=force,
                     target=target, console=console, act_table=act_table, data_file=data_file, test_file=test_file,
                     max_steps=max_steps, bias_bits=bias_bits)
    md = m["model"]
    fewer = f"{md['param_compression']}x fewer than dense" if md["params"] < md["dense_params"] else "same as dense"
    what = {"firmware": f"{m['vectors']['samples']} test sequences", "lib": f"library lib{name}.a",
            "validate": "validation firmware (check it with `kpgen validate`)"}[target]
    click.echo(
        f"wrote {escape(str(out))}: {md['params']} parameters ({fewer}), "
        f"{md['weight_bytes_int8']} weight bytes, arena {m['arena_bytes']} bytes, {what}"
    )
    fe = m["fit_estimate"]
    click.echo(
        f"fits {m['board']}: flash at least {fe['flash_at_least']:,} of {fe['flash_available']:,} bytes "
        f"(model data {fe['model_flash']:,}), RAM at least {fe['ram_at_least']:,} of {fe['ram_available']:,} bytes "
        "(estimate before linking; the linker checks exactly)"
    )
    clip = m.get("input_clipping")
    if clip:
        line = (f"{clip['samples']:,} of {clip['of']:,} test inputs have values beyond the calibrated input range "
                f"+-{clip['input_absmax']:.4g} ({clip['values']:,} values clipped to it)")
        click.echo(line)
        if clip["warn"]:
            click.echo(f"warning: {100 * clip['samples'] / clip['of']:.1f}% of the test inputs are clipped: the "
                       "calibration data does not cover them; calibrate on data like them (--data)", err=True)


@main.command()
@click.argument("project", type=_path())
@click.option("--timeout", type=_Seconds(), default=300.0, show_default=True,
              help="Seconds before a hung firmware is killed.")
@click.option("--no-profile", is_flag=True, help="Skip the instruction-count run.")
def run(project: Path, timeout: float, no_profile: bool) -> None:
    """Build PROJECT (from `kpgen emit`), run it under QEMU, check it bit for bit and print the report.

    Exit status 0 when every sample matched, 1 on a mismatch, fault or hang, 2 on a usage error.
    """
    from kpgen.pipeline import run_project
    from kpgen.target.report import format_report

    with _stoppable("kpgen run"):
        rep = run_project(project, timeout=timeout, profile=not no_profile)
    click.echo(format_report(rep))
    if not rep.passed:
        sys.exit(1)


@main.command()
@click.argument("project", type=_path())
@click.option("--port", default=None, help="The board's serial line (e.g. /dev/ttyACM0; needs the 'serial' extra). "
                                           "Default: run the firmware under QEMU, its UART on a socket.")
@click.option("--baud", type=click.IntRange(1), default=None, help="Baud rate  [default: the board's, from board.toml]")
@click.option("--vectors", type=_path(), default=None,
              help="Test inputs as .npz: x [samples, steps, features] float, optional y labels. "
                   "Default: the test split of the checkpoint's dataset.")
@click.option("--samples", type=click.IntRange(1), default=None, help="Samples to stream  [default: all]")
@click.option("--checkpoint", type=_path(), default=None,
              help="The checkpoint PROJECT was emitted from  [default: the one kpgen.json names]")
@click.option("--timeout", type=_Seconds(), default=10.0, show_default=True,
              help="Seconds to wait for each reply before the sample is sent again.")
def validate(project: Path, port: str | None, baud: int | None, vectors: Path | None, samples: int | None,
             checkpoint: Path | None, timeout: float) -> None:
    """Stream test sequences to PROJECT's validation firmware (`kpgen emit --target validate`) over its UART and
    check every result bit for bit against the integer reference (protocol: docs/validate.md).

    Exit status 0 when every sample was bit-exact, 1 on a mismatch, an unverified sample or a failed run, 2 on a
    usage error.
    """
    from kpgen.pipeline import validate_project
    from kpgen.target.validate import format_outcome

    with _stoppable("kpgen validate"):
        rep = validate_project(project, port=port, baud=baud, vectors=vectors, samples=samples,
                               checkpoint=checkpoint, timeout=timeout)
    b = rep.board
    where = f"QEMU {b.qemu_machine}" if rep.outcome.emulated else rep.outcome.link
    title = f"kpgen validate: {rep.manifest['checkpoint']} on {b.name} ({b.core}, {where}, UART console)"
    click.echo(format_outcome(rep.outcome, title=title, instructions=rep.instructions,
                              clock_hz=b.clock_hz))
    if not rep.passed:
        sys.exit(1)


@main.command()
def boards() -> None:
    """List the board definitions: core, ISA extensions, flash and RAM, QEMU machine."""
    from kpgen.target.boards import format_board_table, list_boards

    click.echo(format_board_table(list_boards()))


@main.command()
@click.argument("project", type=_path())
@click.option("--board", default=None, help="Board to flash; must be the one PROJECT was emitted for (the default).")
@click.option("--probe", type=click.Choice(["openocd", "pyocd", "qemu"]), default=None,
              help="openocd or pyocd for a real board (default openocd); qemu for an emulated one (its default).")
@click.option("--dry-run", is_flag=True, help="Print the exact commands (and pyOCD API calls) without running them.")
@click.option("--port", default=None, metavar="DEV",
              help="Read the firmware's report from this serial port (e.g. /dev/ttyACM0) after flashing a "
                   "UART-console image to a real board (pyserial).")
@click.option("--baud", type=click.IntRange(1), default=None, help="Baud rate for --port  [default: the board's]")
@click.option("--timeout", type=_Seconds(), default=300.0, show_default=True,
              help="Seconds before a firmware that does not exit is stopped.")
def flash(project: Path, board: str | None, probe: str | None, dry_run: bool, port: str | None, baud: int | None,
          timeout: float) -> None:
    """Build PROJECT (from `kpgen emit`), write it into its board and show what the firmware prints.

    Real boards go through their debug probe. A UART-console image (the default) runs on its own once loaded:
    --port DEV reads its report from the board's serial line (the probe only writes and starts it). A --console
    semihosting image prints through the debugger, which stays attached. Emulated boards go through QEMU's GDB
    server, loaded with gdb-multiarch. Exit status: the check's (0 when every test sequence matched), 2 on a
    usage error.
    """
    from kpgen.pipeline import read_manifest
    from kpgen.target import cycles, proc
    from kpgen.target import flash as flashing
    from kpgen.target.verify import verify_output

    plan = flashing.plan(project, board, probe, port=port)
    flashing.check_port(plan, port)
    if dry_run:
        click.echo(plan.describe())
        if port is not None:
            rate = baud or (plan.board.uart.baud if plan.board.uart else 115200)
            click.echo(f"then: read the report from {port} at {rate} baud until its KPGEN-EXIT line")
        return
    echo = (lambda text: click.echo(text, nl=False)) if plan.probe != "qemu" else (lambda text: None)
    with _stoppable("kpgen flash"):
        res = flashing.flash(plan, timeout=timeout, echo=echo, port=port, baud=baud)
    if plan.probe == "qemu":
        click.echo(res.output, nl=False)
        if res.before_load and res.after_load:
            b = plan.board
            click.echo(
                f"loaded {plan.image.name} through QEMU's GDB server ({b.qemu_machine}): flash at "
                f"0x{b.flash_origin + b.boot2_size:08x} held {res.before_load[0]:#010x} {res.before_load[1]:#010x} "
                f"before `load`, {res.after_load[0]:#010x} {res.after_load[1]:#010x} (stack pointer, reset "
                f"vector) after"
            )
    ver = verify_output(res.output, read_manifest(plan.project)["vectors"])
    status = (f"printed more than {proc.OUTPUT_CAP:,} bytes and was stopped" if res.overflowed
              else "timed out" if res.timed_out else f"exit status {res.exit_code}")
    via = f"{plan.probe} and {port}" if port else plan.probe
    measured = cycles.describe_measured(cycles.measured_cycles(res.output), plan.probe == "qemu", plan.board.clock_hz)
    click.echo(f"measured cycles per inference: {measured}")
    click.echo(f"{plan.board.name} via {via}: {status}; bit-exact samples {ver.exact}/{ver.samples}")
    if not (ver.passed and res.exit_code == 0):
        sys.exit(1)



@main.command("plan")
@click.argument("checkpoint", type=_path(), required=False)
@click.option("--rows", type=click.IntRange(1), default=None, help="Rows M of the matrix (e.g. 4H for an LSTM).")
@click.option("--cols", type=click.IntRange(1), default=None, help="Columns N (inputs, or H).")
@click.option("--ratio", type=click.FloatRange(1), default=None,
              help="Compress at least this much: at most M*N/R parameters (for a CHECKPOINT: every matrix).")
@click.option("--max-params", type=click.IntRange(1), default=None,
              help="At most this many parameters (for a CHECKPOINT: all its matrices together, shared in "
                   "proportion to their sizes).")
@click.option("--factors", "num_factors", type=click.IntRange(1, 4), default=2, show_default=True,
              help="Kronecker factors per matrix (the C kernels run any number; 2 is the cheapest to run).")
@click.option("--pad", type=click.FloatRange(0), default=0.125, show_default=True,
              help="Largest padding of an awkward dimension, as a fraction (0: never pad).")
@click.option("--top", type=click.IntRange(1), default=None,
              help="Candidates to list  [default: 10; 5 per matrix shape for a CHECKPOINT]")
@click.option("--board", default=None,
              help="Also predict the instructions of each product (and of a CHECKPOINT's time step) on this board's "
                   "core, from the fitted cost model (docs/cycle-model.md).")
@click.option("--by", type=click.Choice(["rank", "instructions"]), default="rank", show_default=True,
              help="Order: rank bound, then parameters + MACs; or rank bound, then predicted instructions "
                   "(needs --board).")
@click.option("--cost-model", type=_path(), default=None,
              help="Cost model file  [default: the package's kpgen/train/costmodel.json, from `make costmodel`]")
def plan_cmd(checkpoint: Path | None, rows: int | None, cols: int | None, ratio: float | None,
             max_params: int | None, num_factors: int, pad: float, top: int | None, board: str | None, by: str,
             cost_model: Path | None) -> None:
    """List Kronecker factorizations of a ROWS x COLS matrix, or of every recurrent matrix of CHECKPOINT, best
    first, and hybrid-KP ones for a budget.

    CHECKPOINT: any kpgen checkpoint (also the training-side variants: GRU, FastRNN, FastGRNN, bidirectional,
    HKP, low rank, dense, pruned) or a torch LSTM/GRU + Linear state dict, as `kpgen compress` reads them.
    Rules (rank bound, MACs, padding): docs/compression.md.
    """
    from kpgen.train import cost
    from kpgen.train.plan import format_plan, plan

    if by == "instructions" and board is None:
        raise KpgenError("--by instructions needs --board (the core to predict for), e.g. --board m4")
    core = cost.load(cost_model).for_board(board) if board is not None else None
    if checkpoint is not None:
        if rows is not None or cols is not None:
            raise KpgenError("give a CHECKPOINT or --rows and --cols, not both; see `kpgen plan --help`")
        from kpgen.train.compress import read_source
        from kpgen.train.plan import describe_model, format_model_plan, model_matrices

        model, _ = read_source(checkpoint, any_reading=True)  # shapes only: an nn.RNN's tanh or relu does not matter
        click.echo(format_model_plan(f"{checkpoint} ({describe_model(model)})", model_matrices(model), ratio,
                                     max_params, num_factors, pad, top=top or 5, core=core, by=by,
                                     cell=(model.cell, model.hidden_size)))
        return
    if rows is None or cols is None:
        raise KpgenError("give --rows M and --cols N for one matrix, or a CHECKPOINT for every matrix of a model; "
                         "see `kpgen plan --help`")
    click.echo(format_plan(plan(rows, cols, ratio, max_params, num_factors, pad, core, by), top=top or 10))


@main.command()
@click.argument("source", type=_path())
@click.option("--method", type=click.Choice(["kp", "hkp", "prune", "lowrank", "small"]), required=True,
              help="How to compress (docs/compression.md).")
@click.option("--ratio", type=click.FloatRange(1), default=None,
              help="Target compression of every recurrent matrix (needed unless --wx-*/--wh-* cover both).")
@click.option("--wx-factors", callback=_factors, default=None,
              help="kp/hkp: shapes of Wx's factors (e.g. 16x1,8x2, any number of factors, or 'dense'), for every "
                   "Wx they make.")
@click.option("--wh-factors", callback=_factors, default=None, help="kp/hkp: shapes of Wh's factors (as --wx-factors).")
@click.option("--keep-dense", type=click.Choice(["wx", "wh"]), multiple=True,
              help="kp/hkp: keep every Wx (or Wh) dense, e.g. Wx over 1 input feature. Repeatable.")
@click.option("--wx-ratio", type=click.FloatRange(1), default=None,
              help="kp/hkp: compression of Wx  [default: --ratio]")
@click.option("--wh-ratio", type=click.FloatRange(1), default=None,
              help="kp/hkp: compression of Wh  [default: --ratio]")
@click.option("--hkp-rows", type=click.Choice(["auto", "gates", "top"]), default="auto", show_default=True,
              help="hkp: the dense rows spread over the gates (R/G of each, where the G gates divide R) or at the "
                   "top of each matrix; auto: gates for the LSTM, top for the others (docs/compression.md).")
@click.option("-o", "--out", "out", type=_path(), required=True, help="Checkpoint to write.")
@click.option("--dataset", default=None,
              help="Fine-tuning data, a built-in dataset  [default: the checkpoint's]")
@click.option("--data", type=_path(), default=None,
              help="Your own fine-tuning data (.npz or .csv; docs/byom.md); its logits, if any, check a state "
                   "dict's reading first.")
@click.option("--test", type=_path(), default=None,
              help="Held-out data for --data  [default: a seeded 20% of --data]")
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True, help="Fine-tuning epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.02, show_default=True,
              help="Peak learning rate.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing checkpoint.")
@click.option("--distill", is_flag=True,
              help="Fine-tune against the dense source model's soft outputs as well as the labels (knowledge "
                   "distillation; every method alike).")
@click.option("--distill-temperature", "temperature", type=click.FloatRange(0, min_open=True), default=4.0,
              show_default=True, help="Softmax temperature of --distill.")
@click.option("--distill-alpha", "alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the distillation term (1 - alpha: the labels).")
@_qat_options
def compress(source: Path, out: Path, force: bool, wx_factors, wh_factors, keep_dense: tuple[str, ...],
             wx_ratio: float | None, wh_ratio: float | None, hkp_rows: str, qat: bool, **cfg) -> None:
    """Compress the dense RNN in SOURCE (a torch LSTM/GRU/RNN + Linear state dict, or a kpgen checkpoint),
    fine-tune it and write a checkpoint (--method kp on an LSTM: format v1, ready for `kpgen emit`)."""
    from kpgen.train import save_checkpoint
    from kpgen.train.compress import MatrixControl, compress_checkpoint

    if out.exists() and not force:
        raise KpgenError(f"{out} exists; remove it or pass --force to replace it")
    for name, given in (("wx", wx_factors), ("wh", wh_factors)):
        if name in keep_dense and given is not None:
            raise KpgenError(f"--keep-dense {name} and --{name}-factors contradict each other; give one of them")
    if cfg["test"] is not None and cfg["data"] is None:
        raise KpgenError("--test goes with --data (your own fine-tuning data); give both, or neither")
    control = MatrixControl("dense" if "wx" in keep_dense else wx_factors,
                            "dense" if "wh" in keep_dense else wh_factors, wx_ratio, wh_ratio, hkp_rows)
    if not qat:
        cfg["qat_epochs"] = 0
    ckpt = compress_checkpoint(source, **cfg, control=control, log=lambda msg: click.echo(msg, err=True))
    save_checkpoint(ckpt, out)
    m = ckpt["meta"]
    click.echo(f"wrote {escape(str(out))} ({cfg['method']}: matrices {m['matrix_compression']}x smaller, "
               f"float test accuracy {100 * m['float_test_accuracy']:.2f}%)")


@main.command()
@click.option("--dataset", required=True, help="The task: a built-in dataset (mnist, digits, basicmotions, "
                                                "japanesevowels, daphnet) or your data file (.npz or .csv, "
                                                "docs/byom.md; 20% held out).")
@click.option("--board", required=True, help="Board whose budgets and core count (an emulated one, `kpgen boards`).")
@click.option("--from", "source", type=_path(exists=True, dir_okay=False), default=None,
              help="Search compressions (kp, hkp, prune, small) of this dense checkpoint instead of training "
                   "from scratch.")
@click.option("--max-flash", default=None, help="Flash budget for model data + kernels, e.g. 32KiB.")
@click.option("--max-ram", default=None, help="RAM budget for the model's arena, e.g. 8KiB.")
@click.option("--max-instructions", type=click.IntRange(1), default=None,
              help="Instructions per inference (counted exactly under QEMU).")
@click.option("--max-latency", default=None,
              help="Time per inference, e.g. 5ms: estimated cycles at the board's clock (an estimate).")
@click.option("--clock-hz", type=click.IntRange(1), default=None,
              help="Core clock for --max-latency  [default: the board's, from board.toml]")
@click.option("--trials", type=click.IntRange(1, 10000), default=20, show_default=True, help="Models to try.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Most training epochs per trial (ASHA stops weak trials earlier).")
@click.option("--searcher", type=click.Choice(["random", "tpe"]), default="random", show_default=True,
              help="random sampling, or Optuna's TPE.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Trials at once  [default: every CPU of this machine or of the cluster]")
@click.option("--address", envvar="RAY_ADDRESS", default=None,
              help="Attach to this Ray cluster (host:port)  [default: $RAY_ADDRESS, else Ray in this process]")
@click.option("--resume", is_flag=True, help="Continue the search in -o after an interruption.")
@click.option("-o", "--out", "out", type=_path(file_okay=False), required=True,
              help="Output directory: pareto.csv, pareto.png, best.pt, report.md, trials.csv, tune/.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler, the data split and weights.")
def search(dataset: str, board: str, source: Path | None, max_flash: str | None, max_ram: str | None,
           max_instructions: int | None, max_latency: str | None, clock_hz: int | None, trials: int, epochs: int,
           searcher: str, workers: int | None, address: str | None, resume: bool, out: Path, seed: int) -> None:
    """Find the most accurate model of DATASET that fits BOARD's budgets: a design-space search on Ray Tune
    (docs/search.md). Every trial's int8 accuracy, sizes and instructions are measured; the Pareto front is
    run bit-exact under QEMU and the best model written as best.pt."""
    from kpgen.studies import search as study

    s = study.Settings(
        dataset=str(Path(dataset).resolve()) if dataset.lower().endswith((".npz", ".csv")) else dataset,
        board=board, out=str(out.resolve()), source=str(source.resolve()) if source else None,
        max_flash=study.parse_size(max_flash, "--max-flash") if max_flash is not None else None,
        max_ram=study.parse_size(max_ram, "--max-ram") if max_ram is not None else None,
        max_instructions=max_instructions,
        max_latency=study.parse_seconds(max_latency, "--max-latency") if max_latency is not None else None,
        clock_hz=clock_hz, trials=trials, epochs=epochs, searcher=searcher,
        workers=workers or 0, seed=seed)
    with _stoppable("kpgen search"):
        summary = study.run_search(s, address=address, resume=resume, log=lambda m: click.echo(m, err=True))
    if summary.interrupted:
        click.echo(f"kpgen: error: kpgen search interrupted; its study is saved: continue it with `kpgen search "
                   f"--resume -o {escape(str(out))}`", err=True)
        sys.exit(1)
    click.echo(study.format_summary(summary))
    if summary.best is None:
        raise study.no_model_error(summary)


if __name__ == "__main__":  # pragma: no cover
    main()
