"""The table `kpgen run` prints: accuracy, bit-exactness, instructions, bytes, compression."""

from __future__ import annotations

from kpgen.tables import text_table
from kpgen.target.cycles import describe_measured


def _checked_state(m: dict) -> str:
    """What the per-step digests cover (golden.GoldenTrace): outputs only when a layer is bidirectional."""
    layers = m["model"]["layers"]
    if any(l.get("bidirectional") for l in layers):
        return "the outputs of every layer"
    if all(l.get("cell", "lstm") == "lstm" for l in layers):
        return "h and c of every layer"
    return "h of every layer and c of every LSTM layer"


def _pct(v: float | None) -> str:
    return "n/a (no labels)" if v is None else f"{100 * v:.2f}%"


def _stages(per_function: dict[str, int], total: int) -> list[str]:
    rows = sorted(per_function.items(), key=lambda kv: -kv[1])
    cells = [(name, f"{count:,}", f"{100 * count / total:.1f}%") for name, count in rows if count]
    return text_table(cells, align="lrr", min_widths=(27, 12, 6), indent="    ")


def format_report(rep) -> str:
    m = rep.manifest
    md = m["model"]
    acc = m["accuracy"]
    vec = m["vectors"]
    ver = rep.verification
    b = rep.board
    lines = [f"kpgen run: {m['checkpoint']} on {b.name} ({b.core}, QEMU {b.qemu_machine})", ""]
    rows = [
        (f"float accuracy ({acc['test_samples']} {acc['test_set']})", _pct(acc["float"])),
        *([(f"your model's accuracy ({acc['test_samples']}, its logits)", _pct(acc["user_float"]))]
          if isinstance(acc.get("user_float"), (int, float)) else []),
        (f"int8 golden accuracy ({acc['test_samples']})", _pct(acc["int8_golden"])),
        (
            f"on-target accuracy ({ver.labelled} run on {b.name})",
            _pct(ver.target_correct / ver.labelled if ver.labelled else None),
        ),
        ("bit-exact samples",
         f"{ver.exact}/{vec['samples']} (scores, and {_checked_state(m)} at all {vec['steps']} steps)"),
    ]
    if rep.instructions is not None:
        steps = vec["steps"]
        rows.append(
            (
                "instructions per inference",
                f"{rep.instructions:,} ({steps} steps, {rep.instructions / steps:,.0f} per step; exact, QEMU trace)",
            )
        )
    else:
        rows.append(("instructions per inference", "not measured"))
    est = getattr(rep, "cycles", None)
    if rep.instructions is not None and est is not None:
        rows.append(
            (
                "estimated cycles per inference",
                f"{est.cycles:,} on a {est.core} ({est.cycles / vec['steps']:,.0f} per step; "
                f"estimate, cost model docs/cycle-model.md)",
            )
        )
    rows.append(("measured cycles per inference",
                 describe_measured(getattr(rep, "measured_cycles", None), b.emulated, b.clock_hz)))
    s = rep.sizes
    rows.append(("flash", f"{s['text'] + s['data']:,} bytes (model weights and tables {rep.weight_bytes_flash:,})"))
    rows.append(("RAM", f"model arena {m['arena_bytes']:,} bytes; firmware .data+.bss {s['data'] + s['bss']:,} bytes"))
    if rep.stack:
        worst = max(rep.stack.items(), key=lambda kv: kv[1])
        rows.append(("stack (largest frame)", f"{worst[1]} bytes in {worst[0]} (-fstack-usage)"))
    sc = getattr(rep, "stack_check", None)
    if sc is not None:
        chain = " -> ".join(sc.chain) if sc.chain else "the model is not linked into this firmware"
        rows.append(("stack (deepest model call)", f"{sc.bytes:,} of {sc.limit:,} bytes: {chain}"))
    for i, layer in enumerate(md["layers"]):
        rows.append(
            (
                f"layer {i} matrices ({layer.get('cell', 'lstm')}"
                f"{', bidirectional' if layer.get('bidirectional') else ''})",
                f"{layer['matrix_params_dense']:,} -> {layer['matrix_params_kp']:,} parameters "
                f"({layer['matrix_compression']}x)",
            )
        )
    rows.append(
        (
            "whole model",
            f"{md['dense_params']:,} -> {md['params']:,} parameters ({md['param_compression']}x); "
            f"{md['dense_float32_bytes']:,} float32 bytes -> {md['weight_bytes_int8']:,} int8 bytes "
            f"({md['byte_compression_vs_dense_float32']}x)",
        )
    )
    lines += text_table(rows, indent="  ")
    if rep.instructions is not None and rep.per_function:
        lines += ["", "  instructions by function (one inference):"] + _stages(rep.per_function, rep.instructions)
    problem = getattr(rep, "problem", None)
    if problem:
        lines.append(f"\nFAILED: {problem}")
    else:
        if rep.timed_out:
            lines.append("\nFAILED: the firmware did not finish within the timeout and was killed")
        if rep.fault_pc is not None:
            lines.append(f"\nFAILED: the firmware faulted (HardFault) at pc=0x{rep.fault_pc:08x}")
        if rep.exit_code not in (0, None) and not rep.fault_pc:
            lines.append(f"\nFAILED: the firmware exited with status {rep.exit_code}")
    for p in ver.problems[:10]:
        lines.append(f"  mismatch: {p}")
    lines.append("")
    lines.append("PASS: bit-exact" if rep.passed else "FAIL")
    return "\n".join(lines)
