"""The profiler: the cheapest recompute plan that keeps a receiver's quality within a budget.

For one (sender, receiver) pair and some calibration rows, DroidSpeak's offline profiling scores
every contiguous group of layers at a granularity (2 by default) and keeps the cheapest plan whose
quality stays within a budget of the receiver's own full prefill. This module does that, made
practical on a CPU by three observations:

1. **One recompute per group start, not per group.** A group ``[s, e)`` recomputes the receiver's
   layers ``s..e-1`` from the sender's E at ``s``; those K/V do not depend on ``e`` nor on any
   other group. So per row the receiver runs layers ``s..L-1`` once for every unit boundary ``s``
   (8 full prefills' worth of layers at L=30, g=2, instead of ~45 for the 120 groups one by one),
   and the cache of *any* plan at the granularity, single- or multi-group, is assembled from
   those pieces and the sender's K/V. Assembling is exact: the same layers run on the same inputs.
2. **A cheap teacher-forced proxy for every candidate.** The receiver's own full-prefill answer is
   the reference continuation; one forward of ``suffix + reference`` on a candidate's cache gives
   the first-token KL, the mean KL over the continuation and the top-1 agreement, with no decoding.
3. **Decoding only along the frontier, with early stopping.** Candidates on the Pareto frontier of
   cost against mean KL are verified by real greedy decoding, by bisection along the frontier (the
   cheapest verified plan within the budget wins), so only a handful are decoded.

Quality is label-free by default: agreement (token F1) of the plan's answer with the receiver's
own full-prefill answer, so a user needs no labelled data. With references and a metric, the
gold metric is used instead, relative to the full prefill's score.

Cost counts recomputed layers and the bytes a plan fetches (reused K/V and one E per transition),
from the measured per-layer compute time and a link bandwidth (``CostModel``). Plans of several
groups come from a cost-aware search: an additive predictor over the per-unit sensitivities ranks
two-group and scattered plans for each cost level; the best are measured, and they are kept only
where they land on the frontier.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from ..core.assemble import Assembly, CaptureSource, assemble, layer_runner
from ..core.capture import SenderCapture, capture
from ..core.decode import greedy, stop_ids
from ..core.plan import RecomputePlan
from ..core.prefill import finish_prefill, full_prefill
from ..core.prompt import PromptTokens
from ..core.result import PrefillResult, ReuseInfo
from ..errors import DroidspeakError
from ..kinds import ShareKind
from ..models.exact import activation_point
from ..models.family import require_compatible
from ..models.loaded import LoadedModel
from ..models.surface import KV
from ..quality import agreement, score
from ..sharing.profile import Candidate, CostModel, Profile, Quality
from .search import boundaries, plan_of_units, propose_multi

DEFAULT_BUDGET = 0.01
DEFAULT_GRANULARITY = 2
DEFAULT_BANDWIDTH_GBPS = 10.0  # a commodity datacenter link; the store issue measures the real one


# ----------------------------------------------------------------------------- per-row state
@dataclass(slots=True)
class _Row:
    prompt: PromptTokens
    reference: str | None
    cap: SenderCapture  # the sender's K/V per layer and E at every unit boundary
    recomputed: dict[int, dict[int, KV]]  # start -> layer -> receiver K/V (layers start..L-1 run once from E at start)
    ref_tokens: list[int]  # the receiver's own full-prefill answer
    ref_logprobs: torch.Tensor  # [m, vocab] teacher-forced log-probs over ref_tokens (plan "all")
    full_answer: str
    gold_full: float | None = None


class Profiler:
    """Profiles one (sender, receiver) pair on a list of prompts (see the module docstring)."""

    def __init__(self, sender: LoadedModel, receiver: LoadedModel, prompts: list[PromptTokens],
                 references: list[str | None] | None = None, metric: str | None = None,
                 budget: float = DEFAULT_BUDGET, granularity: int = DEFAULT_GRANULARITY,
                 max_new_tokens: int = 24, bandwidth_gbps: float | None = DEFAULT_BANDWIDTH_GBPS,
                 search_budget: int = 40, max_minutes: float = 30.0, progress: bool = True):
        require_compatible(sender.family, receiver.family, sender.name, receiver.name)
        if not prompts:
            raise DroidspeakError("no rows to profile on")
        if not 0 <= budget < 1:
            raise DroidspeakError("--budget is a relative quality drop in [0, 1), e.g. 0.01 for 1%")
        if any(not p.suffix for p in prompts):
            raise DroidspeakError("every row needs a request after the shared context")
        self.sender, self.receiver = sender, receiver
        self.prompts = prompts
        self.references = references or [None] * len(prompts)
        self.labelled = metric is not None and all(r is not None for r in self.references)
        if metric is not None and not self.labelled:
            raise DroidspeakError(f"metric '{metric}' needs a reference on every row")
        self.metric = metric
        self.budget = budget
        self.L = receiver.num_layers
        self.bounds = boundaries(self.L, granularity)
        self.granularity = granularity
        self.U = len(self.bounds) - 1
        self.max_new_tokens = max_new_tokens
        self.bandwidth_gbps = bandwidth_gbps
        self.search_budget = search_budget
        self.max_s = max_minutes * 60
        self.progress = progress
        self.surface = receiver.surface
        self.stops = stop_ids(receiver.tokenizer)
        self.rows: list[_Row] = []
        self.cands: dict[str, Candidate] = {}
        self.notes: list[str] = []
        self._t0 = 0.0
        self._compute_s = 0.0
        self._computed_layer_tokens = 0

    # ------------------------------------------------------------------ helpers
    def _quality(self, answer: str, row: _Row) -> float:
        if self.labelled:
            return score(self.metric, answer, row.reference or "")
        return agreement(answer, row.full_answer)

    def _bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, file=sys.stderr)

    def _assembly(self, row: _Row, plan: RecomputePlan) -> Assembly:
        """A candidate's context cache, through the one assembler: the runner hands back the K/V
        recomputed once per group start (the same layers on the same inputs, so exact)."""

        def memo(s: int, e: int, _hidden: torch.Tensor) -> tuple[None, dict[int, KV]]:
            return None, {layer: row.recomputed[s][layer] for layer in range(s, e)}

        return assemble(self.surface, row.prompt.prefix, plan, CaptureSource(row.cap), runner=memo)

    def _activation(self, row: _Row) -> int | None:
        return activation_point(row.prompt.ids, self.receiver.activation)

    # ------------------------------------------------------------------ stage 1: rows
    @torch.inference_mode()
    def _prepare(self, prompt: PromptTokens, reference: str | None) -> _Row:
        starts = self.bounds[:-1]
        cap = capture(self.sender, list(prompt.prefix), e_layers=[s for s in starts if s > 0])
        full = full_prefill(self.receiver, prompt.ids, room=self.max_new_tokens)
        ref = greedy(self.receiver, full, self.max_new_tokens, self.stops)
        del full
        n = len(prompt.prefix)
        run = layer_runner(self.surface, n)
        recomputed: dict[int, dict[int, KV]] = {}
        t0 = time.perf_counter()
        for s in starts:  # each start once, through every layer above it
            hidden = self.surface.embed(torch.tensor([list(prompt.prefix)])) if s == 0 else cap.e[s]
            _, recomputed[s] = run(s, self.L, hidden)
        self._compute_s += time.perf_counter() - t0
        self._computed_layer_tokens += sum(self.L - s for s in starts) * n
        row = _Row(prompt, reference, cap, recomputed, ref, torch.empty(0), self.receiver.detokenize(ref))
        row.ref_logprobs = self._teacher_forced(row, RecomputePlan.all(self.L))
        if self.labelled:
            row.gold_full = score(self.metric, row.full_answer, reference or "")
        return row

    def _teacher_forced(self, row: _Row, plan: RecomputePlan) -> torch.Tensor:
        """Log-probs ``[m, vocab]`` the plan's cache gives each token of the reference continuation."""
        ids = list(row.prompt.suffix) + row.ref_tokens[:-1]
        cache = self.surface.cache_from(self._assembly(row, plan).kv)
        logits = self.surface.forward(torch.tensor([ids]), cache, keep=len(row.ref_tokens),
                                      activation_at=self._activation(row))
        return torch.log_softmax(logits.float(), dim=-1)

    # ------------------------------------------------------------------ stage 2: proxy
    @torch.inference_mode()
    def _measure(self, units: tuple[int, ...], kind: str) -> Candidate:
        plan = plan_of_units(units, self.bounds)
        key = str(plan)
        if key in self.cands:
            return self.cands[key]
        first, mean, top1 = [], [], []
        for row in self.rows:
            q = self._teacher_forced(row, plan)
            p = row.ref_logprobs
            kl = torch.sum(p.exp() * (p - q), dim=-1)  # [m]
            first.append(float(kl[0]))
            mean.append(float(kl.mean()))
            top1.append(float((q.argmax(-1) == torch.tensor(row.ref_tokens)).float().mean()))
        c = Candidate(key, tuple(sorted(units)), kind, len(plan.recomputed_layers), len(plan.groups),
                      len(plan.transition_layers), self.cost.relative(plan),
                      sum(first) / len(first), sum(mean) / len(mean), sum(top1) / len(top1))
        self.cands[key] = c
        return c

    def _out_of_time(self, share: float) -> bool:
        return time.time() - self._t0 > share * self.max_s

    def _search_multi(self, sens: list[float]) -> list[Candidate]:
        """Measure the multi-group plans :func:`propose_multi` ranks first, within the search budget."""
        proposals = propose_multi(sens, self.bounds)
        out = []
        bar = self._bar(min(len(proposals), self.search_budget), "multi-group search")
        for _, units, kind in proposals[: self.search_budget]:
            if self._out_of_time(0.75):
                self.notes.append("multi-group search stopped early: time budget")
                break
            out.append(self._measure(units, kind))
            bar.update(1)
        bar.close()
        return out

    # ------------------------------------------------------------------ stage 3: verification
    @torch.inference_mode()
    def _verify(self, c: Candidate) -> Candidate:
        if c.verified:
            return c
        plan = RecomputePlan.parse(c.plan, self.L)
        qs = []
        for row in self.rows:
            at = self._activation(row)
            cache, logits, _ = finish_prefill(self.receiver, self._assembly(row, plan), row.prompt.ids,
                                              self.max_new_tokens, at)
            res = PrefillResult(cache, logits, [], ReuseInfo(ShareKind.PROFILED), activation_at=at)
            answer = self.receiver.detokenize(greedy(self.receiver, res, self.max_new_tokens, self.stops))
            qs.append(self._quality(answer, row))
        c.quality = sum(qs) / len(qs)
        c.relative_drop = (self.quality_full - c.quality) / self.quality_full if self.quality_full else 0.0
        c.verified = "decoded"
        return c

    @property
    def quality_full(self) -> float:
        if self.labelled:
            return sum(r.gold_full or 0.0 for r in self.rows) / len(self.rows)
        return 1.0

    @staticmethod
    def frontier(cands: list[Candidate]) -> list[Candidate]:
        """Pareto frontier: in cost order, each point has a lower mean KL than every cheaper one."""
        out: list[Candidate] = []
        for c in sorted(cands, key=lambda c: (c.cost, c.mean_kl)):
            if not out or c.mean_kl < out[-1].mean_kl - 1e-12:
                out.append(c)
        return out

    # ------------------------------------------------------------------ run
    def run(self) -> Profile:
        self._t0 = time.time()
        bar = self._bar(len(self.prompts), "prefill rows")
        for prompt, ref in zip(self.prompts, self.references):
            self.rows.append(self._prepare(prompt, ref))
            bar.update(1)
        bar.close()
        f = self.receiver.family
        dtype_bytes = torch.empty(0, dtype=self.surface.dtype).element_size()
        self.cost = CostModel(
            self.L, self._compute_s / max(1, self._computed_layer_tokens),
            2 * f.num_kv_heads * f.head_dim * dtype_bytes, f.hidden_size * dtype_bytes,
            self.bandwidth_gbps * 1e9 / 8 if self.bandwidth_gbps else None,
        )
        U = self.U
        # the ends of the scale, then the per-unit sensitivity, then every contiguous group
        self._measure((), "none")
        all_c = self._measure(tuple(range(U)), "all")
        all_c.quality, all_c.relative_drop, all_c.verified = self.quality_full, 0.0, "by construction"
        bar = self._bar(U, "sensitivity")
        sens_c = []
        for u in range(U):
            sens_c.append(self._measure(tuple(x for x in range(U) if x != u), "sensitivity"))
            bar.update(1)
        bar.close()
        sens = [c.mean_kl for c in sens_c]
        groups = [(a, b) for a in range(U) for b in range(a + 1, U + 1) if (a, b) != (0, U)]
        bar = self._bar(len(groups), "contiguous groups")
        for a, b in groups:
            self._measure(tuple(range(a, b)), "single")
            bar.update(1)
        bar.close()
        searched = [] if self._out_of_time(0.6) else self._search_multi(sens)
        if self._out_of_time(0.6) and not searched:
            self.notes.append("multi-group search skipped: time budget")
        front = self.frontier(list(self.cands.values()))
        self._verify(self.cands["none"])  # how much full reuse loses, decoded like every verified plan
        # bisection along the frontier (quality rises with cost along it); "all" is within budget
        lo, hi = 0, len(front) - 1
        bar = self._bar(max(1, len(front).bit_length()), "verify by decoding")
        while lo < hi:
            mid = (lo + hi) // 2
            c = self._verify(front[mid])
            bar.update(1)
            if c.relative_drop is not None and c.relative_drop <= self.budget:
                hi = mid
            else:
                lo = mid + 1
        bar.close()
        chosen = self._verify(front[hi])  # the bisection's end may not have been decoded yet
        if chosen.relative_drop is None or chosen.relative_drop > self.budget:
            chosen = all_c
        # a cheaper verified plan within budget off the bisection path still wins
        ok = [c for c in self.cands.values() if c.verified and c.relative_drop is not None and c.relative_drop <= self.budget]
        chosen = min(ok + [chosen], key=lambda c: (c.cost, c.relative_drop or 0.0))
        tokens = [len(r.prompt.prefix) for r in self.rows]
        return Profile(
            self.sender.name, self.receiver.name, self.sender.capture_weights.identity, self.receiver.identity,
            self.receiver.family.digest, chosen.plan, rows=len(self.rows),
            context_tokens={"min": min(tokens), "max": max(tokens), "mean": round(sum(tokens) / len(tokens))},
            quality=Quality("gold" if self.labelled else "label-free",
                            self.metric if self.labelled else "agreement_f1_vs_full_prefill", self.quality_full),
            budget=self.budget, granularity=self.granularity, max_new_tokens=self.max_new_tokens,
            cost_model=self.cost, bandwidth_gbps=self.bandwidth_gbps, chosen=chosen, full_reuse=self.cands["none"],
            sensitivity=tuple({"unit": u, "layers": [self.bounds[u], self.bounds[u + 1]],
                               "first_token_kl": c.first_token_kl, "mean_kl": c.mean_kl,
                               "top1_agreement": c.top1_agreement} for u, c in enumerate(sens_c)),
            frontier=tuple(c.plan for c in front),
            candidates=tuple(sorted(self.cands.values(), key=lambda c: (c.cost, c.mean_kl))),
            search={"evaluated": len(self.cands), "multi_group_measured": len(searched),
                    "multi_group_on_frontier": sum(c.groups > 1 and c.kind in ("two-group", "scattered") for c in front),
                    "verified": sum(c.verified == "decoded" for c in self.cands.values()),
                    "method": "exact per-start recompute; teacher-forced KL proxy; bisection on the frontier by decoding"},
            notes=tuple(self.notes), wall_s=round(time.time() - self._t0, 1),
        )
