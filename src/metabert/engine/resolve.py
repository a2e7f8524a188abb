"""Which exit policy answers: the one resolver every command and the server use.

Precedence, field by field (name, threshold γ, patience t):

1. a command-line flag (``--policy``, ``--threshold``, ``--patience``) or a policy object given in
   code;
2. a request field (the server's per-request ``threshold``), where the command line left it open;
3. the checkpoint's calibrated policy (``metabert calibrate`` stores it);
4. the documented default: **no early exit** (entropy at γ = 0: every sample reaches the last exit,
   the full model's answers), with a warning that the checkpoint was never calibrated.

A stored threshold belongs to the stored policy: naming another policy without its threshold is an
error that says which flag to add. Patience defaults to 2 where the stored policy gives none.

**One calibrated record per runner.** γ depends on the logits it was chosen with, and INT8 logits
are not fp32 ones. The checkpoint's ``exit_policy`` field holds the eager record at its top level
(as every checkpoint before per-runner calibration did) and the other runners' records under
``runners`` (``{"ort-int8": {...}, "eager-int8": {...}, "ort": {...}}``); ``record_for`` picks the
one for a runner. ``ort`` falls back to the eager record (fp32 ONNX Runtime gives the eager logits
to 1e-4, which ``metabert export`` checks); an INT8 runner without its own record falls back to the
fp32 one with a warning, since that γ was not chosen on its logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from metabert.engine.policies import POLICIES, ExitPolicy, get_policy

log = logging.getLogger(__name__)

DEFAULT_PATIENCE = 2
FP32_RUNNERS = ("eager", "ort")  # the same logits (to 1e-4): one calibration serves both


def record_for(stored: dict | None, runner: str = "eager", warn: bool = True) -> tuple[dict, str]:
    """The calibrated record of ``stored`` (a checkpoint's ``exit_policy`` field) for ``runner``, and
    a note when it was chosen with another runner's logits ("" when it is the runner's own)."""
    stored = stored or {}
    runner = runner.removesuffix("-single")  # the single file's layers are its folder's: the same logits
    own = (stored.get("runners") or {}).get(runner)
    if own:
        return own, ""
    base = {k: v for k, v in stored.items() if k != "runners"}
    if not base or runner == "eager":
        return base, ""
    if runner in FP32_RUNNERS:
        return base, "chosen with eager logits, which fp32 ONNX Runtime reproduces"
    note = f"chosen with fp32 logits, not {runner}'s"
    if warn:
        log.warning("the checkpoint holds no exit policy calibrated for %s: using the fp32 one, %s "
                    "(run `metabert calibrate --runner %s`)", runner, note, runner)
    return base, note


def store_record(stored: dict | None, runner: str, record: dict) -> dict:
    """``stored`` (an ``exit_policy`` field) with ``record`` as ``runner``'s calibrated record."""
    stored = dict(stored or {})
    runners = dict(stored.pop("runners", None) or {})
    if runner == "eager":
        stored = dict(record)
    else:
        runners[runner] = dict(record)
    return {**stored, **({"runners": runners} if runners else {})}


@dataclass(frozen=True)
class Resolved:
    """The policy that answers and where each of its settings came from."""

    policy: ExitPolicy
    source: str  # one line for reports and logs
    calibrated: bool  # a stored calibrated policy is in use (possibly with overridden fields)
    default: bool = False  # nothing named a policy: the full model


def _name_and_patience(name: str | None, patience: int | None, stored: dict | None):
    """(policy name or None, patience or None, the stored record when it is that policy's, else {})
    by the precedence of the module docstring."""
    if name is not None and name not in POLICIES:
        raise ValueError(f"unknown exit policy {name!r}; choose one of: {', '.join(POLICIES)}")
    record = stored or {}
    chosen = name or record.get("name")
    same = bool(record) and record.get("name") == chosen
    t = patience if patience is not None else (record.get("patience") if same else None)
    return chosen, t, record if same else {}


def resolve_name(name: str | None, patience: int | None, stored: dict | None = None,
                 runner: str = "eager") -> tuple[str, int, dict]:
    """The policy name and patience t by the same precedence (for a sweep or a calibration, which
    choose the threshold themselves; entropy when nothing names one), and the stored record (of
    ``runner``, see ``record_for``) they came from, if any."""
    chosen, t, record = _name_and_patience(name, patience, record_for(stored, runner, warn=False)[0])
    return chosen or "entropy", t or DEFAULT_PATIENCE, record


def resolve(
    policy: ExitPolicy | None = None,
    name: str | None = None,
    threshold: float | None = None,
    patience: int | None = None,
    request_threshold: float | None = None,
    stored: dict | None = None,
    warn: bool = True,
    runner: str = "eager",
) -> Resolved:
    """The exit policy by the precedence in the module docstring. ``policy``/``name``/``threshold``/
    ``patience``: level 1 (code or command line); ``request_threshold``: level 2; ``stored``: the
    checkpoint's ``exit_policy`` field (level 3), of which ``runner``'s record is used."""
    if request_threshold is not None and (threshold is not None or policy is not None):
        pinned = policy.threshold if policy is not None else threshold
        raise ValueError(f"threshold {request_threshold}: this server's threshold is fixed at {pinned:g} "
                         "by its command line (--threshold)")
    if policy is not None:
        if name is not None or threshold is not None or patience is not None:
            raise ValueError("give a policy object or name/threshold/patience, not both")
        return Resolved(policy, "given", calibrated=False)
    own, note = record_for(stored, runner, warn=warn and threshold is None and request_threshold is None)
    chosen, t, record = _name_and_patience(name, patience, own)
    gamma = threshold if threshold is not None else request_threshold
    if gamma is None and record:
        gamma = record.get("threshold")
    if chosen is None:
        if gamma is None and t is None:
            if warn:
                log.warning("the checkpoint holds no calibrated exit policy: running the full model "
                            "(run `metabert calibrate`, or pass --threshold)")
            return Resolved(get_policy("entropy", 0.0, DEFAULT_PATIENCE),
                            "default: no calibrated policy, the full model (every sample at the last exit)",
                            calibrated=False, default=True)
        chosen = "entropy"
    resolved = get_policy(chosen, gamma, t or DEFAULT_PATIENCE)
    if gamma is None and resolved.parameter == "threshold":
        raise ValueError(f"--policy {chosen} needs --threshold (the checkpoint holds no calibrated {chosen} threshold)")
    given = [f for f, v in (("policy", name), ("threshold", threshold), ("patience", patience)) if v is not None]
    parts = []
    if given:
        parts.append("--" + ", --".join(given) + " from the command line")
    if request_threshold is not None:
        parts.append("threshold from the request")
    if record:
        parts.append(f"calibrated for {record.get('runner', 'eager')}, stored in the checkpoint"
                     + (f": {record['chosen_on']}" if record.get("chosen_on") else "") + (f" ({note})" if note else ""))
    return Resolved(resolved, "; ".join(parts) or "given", calibrated=bool(record))
