"""Score chunk-selection variants on recorded queries and keys (``capture.py``) against the oracle.

Usage: python benchmarks/selection_study/study.py BUDGET FILE.pt [FILE.pt ...]

For every recorded NIAH cell and full-attention layer, each variant's selection is judged by
- ``needle``: the share of the value's tokens kept for the last query block (kv head 0), and
  ``step``: the same for a one-token block holding only the last query (a decode step);
- ``top32``: per query head, the share of each sampled query's 32 largest dense logits that the
  selection keeps; the mean over heads and the worst head.
Library methods run through :func:`dhsa.select`; the study variants score chunks here and fill the
budget with the same greedy rule (whole chunks by descending score, the last one cut).
"""

import os
import sys

import torch

import dhsa
from dhsa.chunking import compute_boundaries
from dhsa.layout import Geometry
from dhsa.methods.regions import block_regions

TOPK = 32
LIBRARY = (
    tuple(os.environ.get("LIBRARY", "oracle_topk,block_sparse,vertical_slash,hip,dash").split(","))
    if os.environ.get("LIBRARY", "x")
    else ()
)


def chunk_pieces(bounds: torch.Tensor, piece: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Piece bounds splitting every chunk into pieces of at most ``piece`` keys, and each piece's
    chunk index."""
    starts, owners = [], []
    b = bounds.tolist()
    for c in range(len(b) - 1):
        lo, hi = b[c], b[c + 1]
        step = hi - lo if piece is None else piece
        for s in range(lo, hi, max(step, 1)):
            starts.append(s)
            owners.append(c)
    starts.append(b[-1])
    return torch.tensor(starts), torch.tensor(owners)


def piece_means(k: torch.Tensor, pb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean key ``[Hkv, P, D]`` and length ``[P]`` of every piece of ``pb``."""
    lengths = pb[1:] - pb[:-1]
    ids = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    sums = torch.zeros(k.shape[0], len(lengths), k.shape[2])
    sums.index_add_(1, ids, k.float())
    return sums / lengths[None, :, None], lengths


def variant_scores(q, k, bounds, bq, scale, spec):
    """Chunk scores ``[Hkv, NQB, N]`` for one layer (batch 1): see ``VARIANTS``."""
    hq, lq, d = q.shape
    hkv = k.shape[0]
    offset = k.shape[1] - lq
    g = hq // hkv
    n = len(bounds) - 1
    nqb = -(-lq // bq)
    if spec["kind"] == "exact":
        return exact_chunk_scores(q, k, bounds, bq, scale)
    if spec["kind"] == "token":
        return token_max_scores(q, k, bounds, bq, scale)
    if spec["kind"] == "hier":
        return hier_scores(q, k, bounds, bq, scale, spec["factor"])
    if spec.get("probe"):
        base = variant_scores(q, k, bounds, bq, scale, {**spec, "probe": False})
        return torch.maximum(base, probe_scores(spec["probe_q"], k, bounds, scale)[:, None])
    if spec["kind"] == "paper":
        qg = q.float().view(hkv, g, lq, d).mean(1)
        pad = nqb * bq - lq
        qs = torch.nn.functional.pad(qg, (0, 0, 0, pad)).view(hkv, nqb, bq, d).sum(2)
        cnt = torch.full((nqb,), bq)
        cnt[-1] = lq - (nqb - 1) * bq
        qrep = qs / cnt[:, None].sqrt()
        pb, _ = chunk_pieces(bounds, None)
        kmean, ln = piece_means(k, pb)
        krep = kmean * ln[None, :, None].sqrt()
        return qrep @ krep.transpose(-1, -2)
    pb, owner = chunk_pieces(bounds, spec.get("piece"))
    kmean, ln = piece_means(k, pb)
    piece_start = pb[:-1]
    scores = torch.full((hkv, nqb, n), -torch.inf)
    qf = q.float().view(hkv, g, lq, d)
    for qb in range(nqb):
        q0, q1 = qb * bq, min(lq, (qb + 1) * bq)
        if spec["queries"] == "mean":
            qq = qf[:, :, q0:q1].mean(2, keepdim=True)  # [hkv, g, 1, d]
        else:
            qq = qf[:, :, q0:q1]
        logits = scale * torch.einsum("hgqd,hpd->hgqp", qq, kmean)
        visible = piece_start < offset + q1 if spec["queries"] == "mean" else None
        if visible is None:
            pos = offset + torch.arange(q0, q1)
            visible = piece_start[None, :] <= pos[:, None]  # [q, P]
            mask = visible[None, None]
        else:
            mask = visible[None, None, None]
        logits = logits.masked_fill(~mask, -torch.inf)
        lse = torch.logsumexp(logits + ln.float().log()[None, None, None], dim=-1, keepdim=True)
        logmass = logits - lse  # per-token log mass of each piece
        if spec["agg"] == "max":
            per_piece = logmass.amax(dim=(1, 2))  # [hkv, P]
        else:
            per_piece = logmass.exp().sum(dim=(1, 2)).clamp(min=1e-30).log()
        best = torch.full((hkv, n), -torch.inf)
        best.scatter_reduce_(1, owner[None].expand(hkv, -1), per_piece, reduce="amax")
        scores[:, qb] = best
    return scores


def probe_scores(q_probe, k, bounds, scale):
    """``[Hkv, N]``: each chunk's largest per-token log mass under the exact attention of the
    probe queries ``[Hq, P, D]`` (the prompt's last queries), over queries and the group's heads."""
    hq, p, d = q_probe.shape
    hkv, lk = k.shape[0], k.shape[1]
    g = hq // hkv
    logits = scale * torch.einsum("hgqd,hkd->hgqk", q_probe.float().view(hkv, g, p, d), k.float())
    pos = (lk - p) + torch.arange(p)
    logits = logits.masked_fill(torch.arange(lk)[None] > pos[:, None], -torch.inf)
    logmass = logits.log_softmax(-1).amax(dim=(1, 2))
    ids = torch.repeat_interleave(torch.arange(len(bounds) - 1), bounds[1:] - bounds[:-1])
    out = torch.full((hkv, len(bounds) - 1), -torch.inf)
    return out.scatter_reduce_(1, ids[None].expand(hkv, -1), logmass, reduce="amax")


def token_max_scores(q, k, bounds, bq, scale):
    """Each chunk scored by its best token: per query head, the block's mean query against every
    key, normalized to per-token log mass over the visible keys; max over tokens and heads."""
    hq, lq, d = q.shape
    hkv, lk = k.shape[0], k.shape[1]
    g = hq // hkv
    nqb = -(-lq // bq)
    ids = torch.repeat_interleave(torch.arange(len(bounds) - 1), bounds[1:] - bounds[:-1])
    scores = torch.full((hkv, nqb, len(bounds) - 1), -torch.inf)
    qf = q.float().view(hkv, g, lq, d)
    for qb in range(nqb):
        q0, q1 = qb * bq, min(lq, (qb + 1) * bq)
        qm = qf[:, :, q0:q1].mean(2)
        logits = scale * torch.einsum("hgd,hkd->hgk", qm, k.float())
        logits = logits.masked_fill(torch.arange(lk)[None, None] >= (lk - lq) + q1, -torch.inf)
        best = logits.log_softmax(-1).amax(1)
        scores[:, qb].scatter_reduce_(1, ids[None].expand(hkv, -1), best, reduce="amax")
    return scores


def hier_scores(q, k, bounds, bq, scale, factor, room=1856):
    """Two stages: per-head chunk-mean scores (``head-sum``) pick candidate chunks covering
    ``factor * room`` keys per block; candidates are rescored by their best token (per head, the
    block's mean query, minus the stage-1 log partition estimate), max over heads."""
    hq, lq, d = q.shape
    hkv, lk = k.shape[0], k.shape[1]
    g = hq // hkv
    nqb = -(-lq // bq)
    n = len(bounds) - 1
    lengths = (bounds[1:] - bounds[:-1]).float()
    kmean, _ = piece_means(k, bounds)
    ids = torch.repeat_interleave(torch.arange(n), bounds[1:] - bounds[:-1])
    qf = q.float().view(hkv, g, lq, d)
    scores = torch.full((hkv, nqb, n), -torch.inf)
    for qb in range(nqb):
        q0, q1 = qb * bq, min(lq, (qb + 1) * bq)
        qm = qf[:, :, q0:q1].mean(2)  # [hkv, g, d]
        visible = bounds[:-1] < (lk - lq) + q1
        coarse = scale * torch.einsum("hgd,hcd->hgc", qm, kmean).masked_fill(~visible, -torch.inf)
        lse = torch.logsumexp(coarse + lengths.log(), -1, keepdim=True)  # [hkv, g, 1]
        stage1 = (coarse - lse).exp().sum(1)  # [hkv, c]
        order = stage1.argsort(-1, descending=True)
        cum = lengths[order].cumsum(-1)
        for h in range(hkv):
            cand = order[h][cum[h] - lengths[order[h]] < factor * room]
            tok = torch.isin(ids, cand) & (torch.arange(lk) < (lk - lq) + q1)
            logits = scale * qm[h] @ k[h, tok].float().T - lse[h]  # [g, t]
            best = torch.full((n,), -torch.inf)
            best.scatter_reduce_(0, ids[tok], logits.amax(0), reduce="amax")
            scores[h, qb] = best
    return scores


def exact_chunk_scores(q, k, bounds, bq, scale):
    """The best any chunk scoring can do: each chunk scored by its largest true per-token mass
    (softmax probabilities summed over the block's queries and the group's heads)."""
    hq, lq, d = q.shape
    hkv, lk = k.shape[0], k.shape[1]
    g = hq // hkv
    nqb = -(-lq // bq)
    ids = torch.repeat_interleave(torch.arange(len(bounds) - 1), bounds[1:] - bounds[:-1])
    scores = torch.full((hkv, nqb, len(bounds) - 1), -torch.inf)
    qf = q.float().view(hkv, g, lq, d)
    for qb in range(nqb):
        q0, q1 = qb * bq, min(lq, (qb + 1) * bq)
        logits = scale * torch.einsum("hgqd,hkd->hgqk", qf[:, :, q0:q1], k.float())
        pos = (lk - lq) + torch.arange(q0, q1)
        logits = logits.masked_fill(torch.arange(lk)[None] > pos[:, None], -torch.inf)
        mass = logits.softmax(-1).sum(dim=(1, 2))
        scores[:, qb].scatter_reduce_(1, ids[None].expand(hkv, -1), mass, reduce="amax")
    return scores


VARIANTS = {
    "exact-chunk": {"kind": "exact"},
    "paper": {"kind": "paper"},
    "head-max": {"kind": "mass", "queries": "mean", "agg": "max"},
    "head-sum": {"kind": "mass", "queries": "mean", "agg": "sum"},
    "query-sum": {"kind": "mass", "queries": "all", "agg": "sum"},
    "token-max": {"kind": "token"},
    "hier-2": {"kind": "hier", "factor": 2},
    "hier-3": {"kind": "hier", "factor": 3},
    "token-max+probe": {"kind": "token", "probe": True},
    "head-max+probe": {"kind": "mass", "queries": "mean", "agg": "max", "probe": True},
    "head-sum+probe": {"kind": "mass", "queries": "mean", "agg": "sum", "probe": True},
    "head-max-p16": {"kind": "mass", "queries": "mean", "agg": "max", "piece": 16},
    "head-sum-p16": {"kind": "mass", "queries": "mean", "agg": "sum", "piece": 16},
    "query-sum-p16": {"kind": "mass", "queries": "all", "agg": "sum", "piece": 16},
}


def fill_block(scores_row, bounds, regions, qb, budget):
    """Key mask ``[L]`` of one query block: sink + window + chunks by descending score."""
    length = int(bounds[-1])
    keep = torch.zeros(length, dtype=torch.bool)
    keep[int(regions.sink_start[qb]) : int(regions.sink_end[qb])] = True
    keep[int(regions.window_start[qb]) : int(regions.block_end[qb])] = True
    room = budget - int(regions.fixed_cost[qb])
    c0, c1 = int(regions.candidate_start[qb]), int(regions.candidate_end[qb])
    lo = bounds[:-1].clamp(min=c0, max=c1)
    hi = bounds[1:].clamp(min=c0, max=c1)
    for c in torch.argsort(scores_row, descending=True, stable=True).tolist():
        if room <= 0 or scores_row[c] == -torch.inf:
            break
        a, b = int(lo[c]), int(hi[c])
        if b <= a:
            continue
        take = min(room, b - a)
        keep[b - take : b] = True
        room -= take
    return keep


def topk_recall(q, k, masks, blocks, bq, scale, kvh_of):
    """Per query head: mean share of the top-32 dense logits kept, over the blocks' queries."""
    hq, lq, _ = q.shape
    out = torch.zeros(hq)
    count = 0
    for qb in blocks:
        q0, q1 = qb * bq, min(lq, (qb + 1) * bq)
        for h in range(hq):
            logits = scale * q[h, q0:q1].float() @ k[kvh_of[h]].float().T
            pos = torch.arange(q0, q1)
            logits = logits.masked_fill(torch.arange(lq)[None] > pos[:, None], -torch.inf)
            top = logits.topk(TOPK, dim=-1).indices
            out[h] += masks[(kvh_of[h], qb)][top].float().mean(-1).sum()
        count += q1 - q0
    return out / count


def main(budget: int, files: list[str], **chunking) -> None:
    config = dhsa.DHSAConfig(budget=budget, min_length=0, **chunking)
    bq = config.query_block
    totals: dict[str, dict[str, list]] = {}
    for file in files:
        data = torch.load(file)
        for cell in data["cells"]:
            shared = None
            for layer, rec in sorted(cell["layers"].items()):
                q, k = rec["q"][0].float(), rec["k"][0].float()
                scale = rec["scale"]
                hq, lq, _ = q.shape
                hkv = k.shape[0]
                kvh_of = [h // (hq // hkv) for h in range(hq)]
                if shared is None:
                    shared = compute_boundaries(k[None], config)
                bounds = shared[0]
                regions = block_regions(
                    Geometry(1, 1, lq, lq, bq), config.sink, config.local, "cpu"
                )
                nqb = regions.block_start.numel()
                first = budget // bq + 1
                blocks = sorted(set(torch.linspace(first, nqb - 1, 8).round().long().tolist()))
                step_regions = block_regions(
                    Geometry(1, 1, 1, lq, 1), config.sink, config.local, "cpu"
                )
                needle = torch.tensor(cell["needle"])
                results = {}
                for name in LIBRARY:
                    lay = dhsa.select(q[None], k[None], config, method=name, scale=scale)
                    mem = lay.key_membership().view(hkv, nqb, lq)
                    step = dhsa.select(q[None, :, -1:], k[None], config, method=name, scale=scale)
                    smem = step.key_membership().view(hkv, 1, lq)
                    results[name] = (mem, smem)
                chosen = os.environ.get("VARIANTS")
                for name, spec in VARIANTS.items():
                    if chosen and name not in chosen.split(","):
                        continue
                    if spec.get("probe"):
                        spec = {**spec, "probe_q": q[:, -64:]}
                    sc = variant_scores(q, k, bounds, bq, scale, spec)
                    ssc = variant_scores(q[:, -1:], k, bounds, 1, scale, spec)
                    mem = torch.zeros(hkv, nqb, lq, dtype=torch.bool)
                    smem = torch.zeros(hkv, 1, lq, dtype=torch.bool)
                    for h in range(hkv):
                        for qb in blocks + [nqb - 1]:
                            mem[h, qb] = fill_block(sc[h, qb], bounds, regions, qb, budget)
                        smem[h, 0] = fill_block(ssc[h, 0], bounds, step_regions, 0, budget)
                    results[name] = (mem, smem)
                for name, (mem, smem) in results.items():
                    masks = {(h, qb): mem[h, qb] for h in range(hkv) for qb in blocks}
                    rec_h = topk_recall(q, k, masks, blocks, bq, scale, kvh_of)
                    row = totals.setdefault(
                        name, {"needle": [], "step": [], "mean": [], "worst": []}
                    )
                    row["needle"].append(float(mem[0, nqb - 1][needle].float().mean()))
                    row["step"].append(float(smem[0, 0][needle].float().mean()))
                    row["mean"].append(float(rec_h.mean()))
                    row["worst"].append(float(rec_h.min()))
                    print(
                        f"{file} {cell['cell']} L{layer} {name:15s} needle "
                        f"{row['needle'][-1]:.2f} step {row['step'][-1]:.2f} top32 "
                        f"{row['mean'][-1]:.3f} worst {row['worst'][-1]:.3f}",
                        flush=True,
                    )
    print(f"\nbudget {budget}: means over cells and layers")
    print(f"{'variant':16s} needle  step   top32  worst-head")
    for name, row in totals.items():
        m = {key: sum(v) / len(v) for key, v in row.items()}
        print(f"{name:16s} {m['needle']:.3f}  {m['step']:.3f}  {m['mean']:.3f}  {m['worst']:.3f}")


if __name__ == "__main__":
    opts = dict(a.split("=") for a in sys.argv[2:] if "=" in a)
    main(
        int(sys.argv[1]),
        [a for a in sys.argv[2:] if "=" not in a],
        **{key: int(value) for key, value in opts.items()},
    )
