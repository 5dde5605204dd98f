"""``rules``: hardware-aware first guesses, each with the reason it is worth measuring.

What decides whether int8 pays on a CPU is mostly known in advance: VNNI / AMX (x86) or the
dot-product extensions (ARM) run int8 dot products several times faster than fp32, while on
AVX2 alone the u8s8 kernels gain little and convolutions often get slower (the digits CNN ran
1.3-1.5x slower with every tool in issue 9's table).  MatMul/Gemm-heavy models gain most
(their weights dominate memory traffic); tiny models gain nothing (quantizing activations
costs more than the arithmetic saved); threads pay only when each op has enough work.

These rules only order the first few measurements.  They are never the final word: every
proposal is measured against the baseline, and ``auto`` hands over to the search.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from . import POLICIES, PolicyBase

if TYPE_CHECKING:  # pragma: no cover
    from ..base import Candidate, PassContext, SearchSpace

__all__ = ["RulesPolicy", "rules", "hardware_facts"]

_MATMUL = {"MatMul", "Gemm", "Attention", "MultiHeadAttention", "Einsum"}
_CONV = {"Conv", "ConvTranspose"}
_SMALL_PARAMS = 50_000  # below this, int8 and threads seldom pay
_THREADS_PARAMS = 200_000  # below this, one thread usually beats several


def hardware_facts(ctx: "PassContext") -> dict[str, Any]:
    """What the rules look at: int8 support of the CPU, op mix and size of the model."""
    cpu = ctx.cpu
    isa = set(cpu.isa)
    arm = cpu.arch.lower() in ("aarch64", "arm64")
    int8_fast = cpu.has_vnni or cpu.has_amx or (arm and bool(isa & {"asimddp", "i8mm"}))
    ops = ctx.baseline.op_counts
    matmul = sum(n for op, n in ops.items() if op in _MATMUL)
    conv = sum(n for op, n in ops.items() if op in _CONV)
    if cpu.has_amx:
        int8 = "AMX"
    elif cpu.has_vnni:
        int8 = "AVX-512 VNNI" if "avx512_vnni" in isa else "AVX-VNNI"
    elif arm and int8_fast:
        int8 = "ARM dot-product (SDOT/I8MM)"
    else:
        int8 = "no int8 dot-product instructions (" + ("AVX2 only" if "avx2" in isa else cpu.arch) + ")"
    return {"cpu": cpu.model, "cores": cpu.physical_cores, "int8_fast": int8_fast, "int8": int8,
            "arm": arm, "matmul_ops": matmul, "conv_ops": conv,
            "kind": "conv" if conv and conv >= matmul else ("matmul" if matmul else "other"),
            "params": ctx.baseline.n_params, "size_bytes": ctx.baseline.size_bytes, "device": ctx.device}


def rules(space: "SearchSpace", ctx: "PassContext") -> list[tuple["Candidate", str]]:
    """The rules' proposals for this model on this hardware, in order, with their reasons.

    Only candidates of ``space`` are proposed; the baseline comes first.
    """
    from ..base import Candidate

    f = hardware_facts(ctx)
    pick = _Picker(space)
    out: list[tuple[Candidate, str]] = [(Candidate(), "the fp32 baseline is always measured")]
    small = f["params"] < _SMALL_PARAMS
    where = f"{f['cpu']} ({f['int8']})"

    # precision
    q = None
    if f["device"] != "cpu":
        out.append((pick("Float16Config"), f"{f['device']}: fp16 halves memory traffic and uses the tensor cores"))
    elif small:
        pass  # stated in the session rule's reason below
    elif f["int8_fast"]:
        q = pick("QuantizeConfig", mode="static", format="qdq", types="s8s8", per_channel=True, calibration="entropy")
        out.append((q, f"{where} runs int8 dot products several times faster than fp32; static QDQ "
                       f"with per-channel weights keeps accuracy ({f['matmul_ops']} MatMul/Gemm, {f['conv_ops']} Conv)"))
        if f["kind"] == "matmul":
            out.append((pick("QuantizeConfig", mode="dynamic", types="u8s8", per_channel=False),
                        f"MatMul/Gemm-heavy model on {f['int8']}: dynamic quantization needs no calibration; "
                        f"per-tensor weights let onnxruntime fuse DynamicQuantizeMatMul (measured 0.27x "
                        f"vs 0.49x per-channel on tiny-bert)"))
            out.append((pick("QuantizeConfig", mode="dynamic", types="u8s8", per_channel=True),
                        f"MatMul/Gemm-heavy model on {f['int8']}: per-channel weights, if per-tensor "
                        f"loses too much accuracy"))
    elif f["kind"] == "matmul":
        q = pick("QuantizeConfig", mode="dynamic", types="u8s8", per_channel=True, reduce_range=True)
        out.append((q, f"{where}: int8 gains little without VNNI, but dynamic u8s8 with 7-bit weights "
                       f"(reduce_range, no saturation) halves the memory traffic of {f['matmul_ops']} "
                       f"MatMul/Gemm weights"))
        out.append((pick("QuantizeConfig", mode="dynamic", types="u8s8", per_channel=False),
                    f"{where}: dynamic u8s8 per-tensor, onnxruntime's own default, as a reference point"))
    # Conv-heavy without fast int8: no int8 guess; convolutions often get slower (the search may still try)
    if q is not None and "MixedPrecisionConfig" in space.families:
        mq = {f"quantize.{k}": v for k, v in q.configs[0].params().items()} if q.configs else {}
        out.append((pick("MixedPrecisionConfig", **mq), "if full int8 breaks the accuracy budget, keeping "
                                                        "the most sensitive layers in fp32 can bring it back"))

    # graph
    out.append((pick("GraphOptConfig"), "graph simplification (constant folding, dead nodes, shape ops) "
                                        "never adds work at run time"))
    # session
    if small or f["params"] < _THREADS_PARAMS:
        threads, why = 1, (f"small model ({f['params']:,} parameters): each op is too little work to split "
                           f"across threads, one thread avoids the synchronisation")
        if small:
            why += "; int8 would cost more in activation (de)quantization than it saves"
    else:
        threads, why = f["cores"], f"{f['params']:,} parameters: intra-op threads = physical cores ({f['cores']})"
    out.append((pick("SessionConfig", threads=threads), why))
    seen: set[str] = set()
    return [(c, w) for c, w in out if c is not None and not (c.key() in seen or seen.add(c.key()))]


class _Picker:
    """Builds a candidate of ``space`` from preferred field values (the rest: defaults, or the
    first searched value); ``None`` when the pass is not in the space."""

    def __init__(self, space: "SearchSpace"):
        self.space = space
        self._keys: set[str] | None = None

    def __call__(self, name: str, **prefer: Any) -> "Candidate | None":
        from ..base import config_class

        fam = self.space.families.get(name)
        if fam is None:
            return None
        cls = config_class(name)
        params = {}
        for field, choices in fam.items():
            want = prefer.get(field, _default(cls, field))
            params[field] = want if want in choices else _closest(want, choices)
        try:
            cand = self.space.build({name: params})
        except Exception:  # noqa: BLE001 - an inconsistent combination: let the search handle it
            return None
        if self._keys is None:
            self._keys = {c.key() for c in self.space.enumerate()}
        return cand if cand.key() in self._keys else None


def _closest(want: Any, choices: list) -> Any:
    """The choice nearest a number (8 threads wanted, [1, 2] offered: 2), else the first."""
    nums = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if isinstance(want, (int, float)) and not isinstance(want, bool) and nums:
        return min(nums, key=lambda c: (abs(c - want), -c))
    return choices[0]


def _default(cls: type, dotted: str) -> Any:
    head, _, rest = dotted.partition(".")
    for f in dataclasses.fields(cls):
        if f.name == head:
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                return None
            return _default(type(value), rest) if rest and dataclasses.is_dataclass(value) else value
    return None


@POLICIES.register("rules")
class RulesPolicy(PolicyBase):
    """Measure the rules' proposals, then their winners combined; never more.

    After the single-pass proposals, one more candidate puts together the best measured
    config of each group (a precision pass that paid, the session that paid, ...).
    """

    name = "rules"

    def __init__(self, space: "SearchSpace", ctx: "PassContext", *, max_trials: int | None = None,
                 store: Any = None, seed: int = 0):
        super().__init__(space, ctx, max_trials=max_trials, store=store, seed=seed)
        self.facts = hardware_facts(ctx)
        self.plan = rules(space, ctx)
        self._combined = False

    def _next(self) -> "Candidate | None":
        while self.plan:
            cand, why = self.plan.pop(0)
            if not self.seen(cand):
                return self._propose(cand, why)
        if not self._combined:
            self._combined = True
            cand = self._combine()
            if cand is not None and not self.seen(cand):
                return self._propose(cand, "combines the passes that paid on their own")
        return None

    def _combine(self) -> "Candidate | None":
        from ..base import Candidate

        base = next((t.objective for t in self.trials if t.candidate.is_baseline and t.objective), None)
        best: dict[str, tuple[float, Any]] = {}
        for t in self.trials:
            if t.objective is None or len(t.candidate.configs) != 1 or (base and t.objective >= base):
                continue
            cfg = t.candidate.configs[0]
            g = cfg.group or type(cfg).__name__
            if g not in best or t.objective < best[g][0]:
                best[g] = (t.objective, cfg)
        if len(best) < 2:
            return None
        try:
            return Candidate.of(*(c for _, c in best.values()))
        except Exception:  # noqa: BLE001
            return None
