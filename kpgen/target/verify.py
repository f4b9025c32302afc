"""Golden against target: the firmware's printed results against the integer reference's, sample by sample."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^S (\d+) (-?\d+) ([0-9a-f]{8})((?: -?\d+)+) (OK|MISMATCH.*)$")
_END = re.compile(r"^KPGEN-END passed=(\d+) failed=(\d+)$")


@dataclass
class Verification:
    samples: int  # expected sample count
    seen: int = 0  # sample lines the firmware printed
    exact: int = 0  # samples whose scores, class and state digests equal the reference's, as both sides judged
    target_correct: int = 0  # samples the firmware classified as labelled
    labelled: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.seen == self.samples and self.exact == self.samples and not self.problems


def verify_output(stdout: str, vectors: dict) -> Verification:
    """Check every sample line against the manifest's expected scores and final state digests.

    A sample counts as bit-exact only when the firmware's own step-by-step check said OK *and* the printed
    scores and final digest equal the reference's here: the two checks are independent.
    """
    exp_scores = vectors["scores"]
    exp_digests = vectors["final_digests"]
    labels = vectors["labels"]
    v = Verification(samples=vectors["samples"])
    got_end = None
    for line in stdout.splitlines():
        line = line.strip()
        m = _SAMPLE.match(line)
        if m:
            idx, cls, digest = int(m.group(1)), int(m.group(2)), m.group(3)
            scores = [int(s) for s in m.group(4).split()]
            v.seen += 1
            if idx >= v.samples:
                v.problems.append(f"sample index {idx} out of range")
                continue
            exp = exp_scores[idx]
            exp_cls = max(range(len(exp)), key=lambda k: (exp[k], -k))
            host_ok = scores == exp and digest == exp_digests[idx] and cls == exp_cls
            if m.group(5) == "OK" and host_ok:
                v.exact += 1
            else:
                v.problems.append(
                    f"sample {idx}: target said {m.group(5)}, scores {'equal' if scores == exp else 'differ'}, "
                    f"digest {digest} vs expected {exp_digests[idx]}"
                )
            if labels[idx] >= 0:
                v.labelled += 1
                v.target_correct += int(cls == labels[idx])
            continue
        m = _END.match(line)
        if m:
            got_end = (int(m.group(1)), int(m.group(2)))
    if got_end is None:
        v.problems.append("the firmware did not print its summary line")
    elif got_end[0] != v.exact:
        v.problems.append(f"firmware counted {got_end[0]} passes, the host {v.exact}")
    if v.seen != v.samples:
        v.problems.append(f"the firmware printed {v.seen} of {v.samples} samples")
    return v
