"""Gallery search at scale: exact numpy vs faiss Flat / IVF-Flat / IVF-PQ / IVF-PQ + refine.

    .venv/bin/python benchmarks/search.py [--gallery 1000000] [--dims 2048,512]
        [--queries 10000] [--skip-flat-above 4G] [--threads N] [--json results.json]
    .venv/bin/python benchmarks/search.py --quick   # 20k gallery, 500 queries, dim 128: smoke run

Every index is built and searched with tfmarket's own functions (:mod:`tfmarket.retrieval.search`):

* ``exact``: :func:`cosine_topk` (numpy, chunked over queries) on the whole gallery in memory.
* ``flat``: :func:`build_faiss_index` ``kind="flat"`` (faiss ``IndexFlatIP``, exact).
* ``ivf``: ``kind="ivf"`` (IVF-Flat), ``nlist`` ~ 4 sqrt(N), several ``nprobe``.
* ``ivfpq``: ``kind="ivfpq"``, ``m = D / d_sub`` sub-quantisers of ``d_sub`` dims each
  (``--pq-sub-dims``, default 16 and 32), 8 bits per code, several ``nprobe``.
* ``ivfpq-refine``: ``kind="ivfpq-refine"``, the same IVF-PQ (``--refine-sub-dims``, default
  16) whose ``k_factor x 100`` candidates are re-ranked by 8-bit scalar-quantised vectors
  (``--refine-types``, default ``sq8``; ``fp16`` doubles the codes), each built index searched
  at every ``--refine-nprobe`` x ``--refine-k-factor`` pair (set with ``set_search_params``).

faiss indexes are searched with :func:`faiss_topk` (k = 100).

Data: a seeded generator of clustered, L2-normalised embeddings shaped like a re-ID
gallery, never held whole: ``--images-per-id`` (20) images per identity, identity centres
grouped into appearance groups of ``--ids-per-group`` (50) identities (people in similar
clothes), sample = normalise(identity centre + noise). A query is a fresh image of a gallery
identity, so its top-100 holds its own ~20 images and then the closest look-alikes of its
group. (Uniform random points on the sphere would make every neighbour list noise.)

The gallery is produced in chunks of ``--chunk`` rows, each from its own seeded generator, so
every pass sees the same vectors; the 1M x 2048 float32 gallery (8 GB) never exists in
memory at once unless an index stores it. IVF indexes are trained on the first
``--train-size`` gallery vectors (the gallery order is random, so that is a random sample):
``build_faiss_index`` trains on them and adds them, the remaining chunks are then added with
``add_to_faiss_index`` (``index.add`` with faiss's PQ-encoding scratch kept to 64 MB).

Ground truth: exact top-100 by inner product, computed once per dim with one faiss
``IndexFlatIP`` per gallery chunk and a running top-100 merged chunk by chunk.

Each index runs in its own fresh (spawned) worker process, so "peak RSS" is that index's own
high-water mark (``resource.getrusage``): index + training sample + data-generation buffers +
queries + results. "index MB" is ``faiss.serialize_index(index).nbytes`` (estimated from the
layout when that would copy more than 1 GB); for ``exact`` it is the gallery matrix
(``cosine_topk`` also makes a transposed copy, counted in its peak RSS). Rows whose raw
vectors would exceed ``--skip-flat-above`` bytes (exact: 2 x N x D x 4, flat: N x D x 4,
ivf: N x (D x 4 + 8), ivfpq-refine: N x (D x 1 or 2 + m + 8) for its refine codes and PQ
codes) are not run and show "skipped (memory)".

Timing: build = train + add (data generation excluded); search = one ``faiss_topk`` (or
``cosine_topk``) call over all queries after a small untimed warm-up, reported as seconds
per 1,000 queries. "meets target" = recall@100 >= 0.95 and <= 1 s per 1,000 queries and
peak RSS <= 4 GB (``--target-*``).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tfmarket.retrieval.search import (  # noqa: E402
    add_to_faiss_index,
    build_faiss_index,
    cosine_topk,
    faiss_topk,
    set_search_params,
)

K = 100
KINDS = ("exact", "flat", "ivf", "ivfpq", "ivfpq-refine")
REFINE_BYTES = {"sq8": 1, "fp16": 2}  # refine-code bytes per dim
MB = 1024 * 1024
SERIALIZE_LIMIT = 1024 * MB
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_bytes(text: str) -> int:
    """'4G', '512M', '4096MB', '4e9' -> bytes (K/M/G/T are powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    if t and t[-1] in scale:
        return int(float(t[:-1]) * scale[t[-1]])
    return int(float(t))


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_numbers(text: str) -> list[int | float]:
    """'2,4,1.5' -> [2, 4, 1.5] (whole numbers as int, so they print as '4', not '4.0')."""
    values = [float(x) for x in text.split(",") if x.strip()]
    return [int(v) if v.is_integer() else v for v in values]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gallery", type=int, default=1_000_000, help="gallery size N")
    parser.add_argument("--dims", default="2048,512", help="embedding dims, default %(default)s")
    parser.add_argument("--queries", type=int, default=10_000, help="number of queries")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="rows to run, default %(default)s")
    parser.add_argument("--nlist", type=int, default=0, help="IVF cells (0: round(4 sqrt(N)))")
    parser.add_argument("--ivf-nprobe", default="8,16,32,64", help="IVF-Flat nprobe values")
    parser.add_argument("--pq-nprobe", default="8,16,32,64,128", help="IVF-PQ nprobe values")
    parser.add_argument("--pq-sub-dims", default="16,32",
                        help="dims per PQ sub-quantiser (m = D / value), default %(default)s")
    parser.add_argument("--nbits", type=int, default=8, help="bits per PQ code")
    parser.add_argument("--refine-nprobe", default="16,32,64",
                        help="ivfpq-refine nprobe values, default %(default)s")
    parser.add_argument("--refine-k-factor", default="4,8,16",
                        help="ivfpq-refine candidates re-ranked per result (x 100), "
                             "default %(default)s")
    parser.add_argument("--refine-sub-dims", default="16",
                        help="ivfpq-refine dims per PQ sub-quantiser, default %(default)s")
    parser.add_argument("--refine-types", default="sq8",
                        help="ivfpq-refine re-ranking codes (sq8, fp16), default %(default)s")
    parser.add_argument("--train-size", type=int, default=160_000,
                        help="IVF/PQ training sample (first gallery vectors), default "
                             "%(default)s (>= 39 x nlist avoids faiss's k-means warning)")
    parser.add_argument("--chunk", type=int, default=32_768,
                        help="gallery rows generated / added / ground-truthed at a time")
    parser.add_argument("--exact-chunk", type=int, default=0,
                        help="cosine_topk query chunk (0: about 256 MB of distances)")
    parser.add_argument("--skip-flat-above", type=parse_bytes, default=4 * 1024**3,
                        help="skip rows storing raw (or refine-code) vectors above this "
                             "many bytes (e.g. 4G, 512M), default 4 GiB")
    parser.add_argument("--images-per-id", type=int, default=20, help="gallery images/identity")
    parser.add_argument("--ids-per-group", type=int, default=50,
                        help="identities per appearance group")
    parser.add_argument("--group-spread", type=float, default=1.0,
                        help="identity-centre spread around its group centre (norm)")
    parser.add_argument("--noise", type=float, default=0.7,
                        help="per-image noise around the identity centre (norm)")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--threads", type=int, default=0,
                        help="faiss/BLAS threads (0: library default = all cores)")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@100 target")
    parser.add_argument("--target-seconds", type=float, default=1.0,
                        help="target seconds per 1,000 queries")
    parser.add_argument("--target-mb", type=float, default=4096, help="target peak RSS (MB)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="gallery 20,000, 500 queries, dim 128 only: a smoke run")
    return parser


# --- synthetic data ---------------------------------------------------------------------------


class SyntheticGallery:
    """Clustered unit embeddings (groups -> identities -> images), generated chunk by chunk."""

    def __init__(self, n: int, dim: int, *, images_per_id: int, ids_per_group: int,
                 group_spread: float, noise: float, seed: int, chunk: int):
        self.n, self.dim, self.seed, self.chunk = int(n), int(dim), int(seed), int(chunk)
        self.noise = float(noise)
        self.n_ids = max(1, self.n // max(1, images_per_id))
        self.n_groups = max(1, self.n_ids // max(1, ids_per_group))
        rng = np.random.default_rng([self.seed, self.dim, 2])
        groups = _normalize(rng.standard_normal((self.n_groups, dim), dtype=np.float32))
        centres = rng.standard_normal((self.n_ids, dim), dtype=np.float32)
        centres *= group_spread / math.sqrt(dim)
        centres += groups[rng.integers(0, self.n_groups, self.n_ids)]
        self.centres = _normalize(centres)

    def _sample(self, rng, count: int) -> np.ndarray:
        ids = rng.integers(0, self.n_ids, count)
        x = rng.standard_normal((count, self.dim), dtype=np.float32)
        x *= self.noise / math.sqrt(self.dim)
        x += self.centres[ids]
        return _normalize(x)

    def chunks(self):
        """Yields (start row, float32 [rows, D]) over the whole gallery, same vectors each pass."""
        for c, start in enumerate(range(0, self.n, self.chunk)):
            rng = np.random.default_rng([self.seed, self.dim, 0, c])
            yield start, self._sample(rng, min(self.chunk, self.n - start))

    def queries(self, count: int) -> np.ndarray:
        return self._sample(np.random.default_rng([self.seed, self.dim, 1]), count)

    def full(self) -> np.ndarray:
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for start, block in self.chunks():
            out[start:start + len(block)] = block
        return out


def _normalize(x: np.ndarray) -> np.ndarray:
    """In place: rows to unit L2 norm."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def make_data(args, dim: int) -> SyntheticGallery:
    return SyntheticGallery(
        args.gallery, dim, images_per_id=args.images_per_id, ids_per_group=args.ids_per_group,
        group_spread=args.group_spread, noise=args.noise, seed=args.seed, chunk=args.chunk,
    )


# --- ground truth -------------------------------------------------------------------------------


def merge_topk(sims_a, ids_a, sims_b, ids_b, k: int):
    """Top-k by descending similarity of two candidate lists per row (ties: lower id first)."""
    sims = np.concatenate([sims_a, sims_b], axis=1)
    ids = np.concatenate([ids_a, ids_b], axis=1)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def ground_truth(data: SyntheticGallery, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k gallery ids [nq, k] via a faiss IndexFlatIP per chunk + running merge."""
    import faiss

    nq = len(queries)
    sims = np.full((nq, 0), -np.inf, dtype=np.float32)
    ids = np.zeros((nq, 0), dtype=np.int64)
    for start, block in data.chunks():
        index = faiss.IndexFlatIP(data.dim)
        index.add(block)
        s, i = index.search(queries, min(k, len(block)))
        sims, ids = merge_topk(sims, ids, s, i.astype(np.int64) + start, k)
    return ids


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


# --- one index per worker process -------------------------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def estimate_index_bytes(spec: dict, n: int, dim: int) -> int:
    if spec["kind"] == "flat":
        return n * dim * 4
    nlist = spec["nlist"]
    if spec["kind"] == "ivf":
        return n * (dim * 4 + 8) + nlist * dim * 4
    m, nbits = spec["m"], spec["nbits"]
    size = n * (m * nbits // 8 + 8) + nlist * dim * 4 + (2**nbits) * dim * 4
    if spec["kind"] == "ivfpq-refine":
        size += n * dim * REFINE_BYTES[spec["refine"]] + 2 * dim * 4  # codes + SQ ranges
    return size


def time_search(index, queries: np.ndarray) -> tuple[float, np.ndarray]:
    faiss_topk(index, queries[:min(64, len(queries))], K)  # untimed warm-up
    t0 = time.perf_counter()
    idx, _ = faiss_topk(index, queries, K)
    return time.perf_counter() - t0, idx


def run_index(spec: dict, args) -> dict:
    """Builds and searches one index (in a spawned worker); returns timings and top-k ids."""
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = make_data(args, spec["dim"])
    queries = data.queries(args.queries)
    gen_s = time.perf_counter() - t0
    base_mb = peak_rss_mb()
    out = {"baseline_rss_mb": base_mb, "searches": []}
    n, dim = data.n, data.dim

    if spec["kind"] == "exact":
        t0 = time.perf_counter()
        gallery = data.full()
        gen_s += time.perf_counter() - t0
        chunk = args.exact_chunk or max(1, min(1024, 2**28 // (4 * n)))
        cosine_topk(queries[:min(8, len(queries))], gallery, K, chunk_size=chunk)  # warm-up
        t0 = time.perf_counter()
        idx, _ = cosine_topk(queries, gallery, K, chunk_size=chunk)
        secs = time.perf_counter() - t0
        out.update(build_seconds=None, index_bytes=int(gallery.nbytes),
                   index_bytes_method="gallery", exact_chunk=chunk, peak_rss_mb=peak_rss_mb(),
                   generate_seconds=gen_s)
        out["searches"].append({"params": {"chunk_size": chunk}, "seconds": secs, "indices": idx})
        return out

    params = {k: spec[k] for k in ("nlist", "m", "nbits", "refine") if k in spec}
    first_rows = min(n, args.chunk if spec["kind"] == "flat" else args.train_size)
    build_s = 0.0
    chunks = data.chunks()
    sample = np.empty((first_rows, dim), dtype=np.float32)
    filled, rest = 0, None
    t_gen = time.perf_counter()
    for _, block in chunks:
        take = min(len(block), first_rows - filled)
        sample[filled:filled + take] = block[:take]
        filled += take
        if filled == first_rows:
            rest = block[take:]
            break
    gen_s += time.perf_counter() - t_gen
    t0 = time.perf_counter()
    index = build_faiss_index(sample, kind=spec["kind"], seed=args.seed, **params)
    if rest is not None and len(rest):
        add_to_faiss_index(index, rest)
    build_s += time.perf_counter() - t0
    del sample, rest
    t_gen = time.perf_counter()
    for _, block in chunks:
        t0 = time.perf_counter()
        gen_s += t0 - t_gen
        add_to_faiss_index(index, block)
        t_gen = time.perf_counter()
        build_s += t_gen - t0
    assert index.ntotal == n, (index.ntotal, n)

    for search in spec.get("searches") or [{}]:  # e.g. {"nprobe": 16, "k_factor": 4}
        set_search_params(index, **search)
        secs, idx = time_search(index, queries)
        out["searches"].append({"params": search, "seconds": secs, "indices": idx})
    out["peak_rss_mb"] = peak_rss_mb()
    est = estimate_index_bytes(spec, n, dim)
    if est <= SERIALIZE_LIMIT:
        out.update(index_bytes=int(faiss.serialize_index(index).nbytes),
                   index_bytes_method="serialize_index")
    else:
        out.update(index_bytes=est, index_bytes_method="estimate")
    out.update(build_seconds=build_s, generate_seconds=gen_s)
    return out


def run_isolated(spec: dict, args) -> dict:
    """run_index in a fresh spawned process, so its peak RSS is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_index, spec, args).result()


# --- plan, report -----------------------------------------------------------------------------


def plan(args, dim: int) -> list[dict]:
    n = args.gallery
    nlist = args.nlist or max(1, round(4 * math.sqrt(n)))
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    specs = []
    for kind in kinds:
        if kind == "exact":
            specs.append({"kind": "exact", "dim": dim, "needs_bytes": 2 * n * dim * 4})
        elif kind == "flat":
            specs.append({"kind": "flat", "dim": dim, "needs_bytes": n * dim * 4})
        elif kind == "ivf":
            searches = [{"nprobe": p} for p in nprobe_values(args.ivf_nprobe, nlist)]
            specs.append({"kind": "ivf", "dim": dim, "nlist": nlist, "searches": searches,
                          "needs_bytes": n * (dim * 4 + 8)})
        elif kind in ("ivfpq", "ivfpq-refine"):
            refine = kind == "ivfpq-refine"
            nprobes = nprobe_values(args.refine_nprobe if refine else args.pq_nprobe, nlist)
            if refine:
                searches = [{"nprobe": p, "k_factor": f} for p in nprobes
                            for f in parse_numbers(args.refine_k_factor)]
                types = [t.strip() for t in args.refine_types.split(",") if t.strip()]
                if unknown := sorted(set(types) - set(REFINE_BYTES)):
                    raise SystemExit(f"unknown --refine-types {unknown}; valid: sq8, fp16")
            else:
                searches, types = [{"nprobe": p} for p in nprobes], [None]
            for sub in parse_ints(args.refine_sub_dims if refine else args.pq_sub_dims):
                if dim % sub or sub > dim:
                    print(f"  dim {dim}: skipping {kind} with {sub} dims per sub-quantiser "
                          "(does not divide D)")
                    continue
                m = dim // sub
                for rtype in types:
                    spec = {"kind": kind, "dim": dim, "nlist": nlist, "m": m,
                            "nbits": args.nbits, "searches": searches, "needs_bytes": 0}
                    if refine:
                        spec["refine"] = rtype
                        spec["needs_bytes"] = n * (dim * REFINE_BYTES[rtype] + m + 8)
                    specs.append(spec)
        else:
            raise SystemExit(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    return specs


def nprobe_values(text: str, nlist: int) -> list[int]:
    return sorted({min(p, nlist) for p in parse_ints(text)})


def spec_params(spec: dict) -> str:
    parts = []
    if "nlist" in spec:
        parts.append(f"nlist={spec['nlist']}")
    if "m" in spec:
        parts.append(f"m={spec['m']} ({spec['dim'] // spec['m']}d/sub) nbits={spec['nbits']}")
    if "refine" in spec:
        parts.append(f"refine={spec['refine']}")
    return " ".join(parts)


def meets(row: dict, args) -> str:
    failed = []
    if row["recall_at_100"] < args.target_recall:
        failed.append("recall")
    if row["seconds_per_1k_queries"] > args.target_seconds:
        failed.append("time")
    if row["peak_rss_mb"] > args.target_mb:
        failed.append("memory")
    return "yes" if not failed else "no (" + ", ".join(failed) + ")"


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: list[dict]) -> str:
    header = ("dim", "index", "params", "build s", "s/1k queries", "index MB", "peak RSS MB",
              "recall@10", "recall@100", "meets target")
    lines = []
    for r in rows:
        if r.get("skipped"):
            lines.append((str(r["dim"]), r["index"], r["params"], *("-",) * 6, r["skipped"]))
            continue
        lines.append((
            str(r["dim"]), r["index"], r["params"], fmt(r["build_seconds"], ".2f"),
            fmt(r["seconds_per_1k_queries"], ".3f"), fmt(r["index_mb"], ".1f"),
            fmt(r["peak_rss_mb"], ".0f"), fmt(r["recall_at_10"], ".4f"),
            fmt(r["recall_at_100"], ".4f"), r["meets_target"],
        ))
    return render_table(header, lines, left=(1, 2, 9))




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.gallery, args.queries, args.dims = 20_000, 500, "128"
    if args.threads:
        for var in THREAD_VARS:  # inherited by the spawned workers before they import numpy
            os.environ[var] = str(args.threads)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    dims = parse_ints(args.dims)
    print(f"gallery {args.gallery:,} x {args.dims}, {args.queries:,} queries, k={K}; "
          f"skip raw-vector rows above {args.skip_flat_above / MB:,.0f} MB; "
          f"threads {args.threads or 'default'}", flush=True)

    rows: list[dict] = []
    truth_info = {}
    for dim in dims:
        data = make_data(args, dim)
        queries = data.queries(args.queries)
        print(f"dim {dim}: {data.n_ids:,} identities in {data.n_groups:,} groups", flush=True)
        t0 = time.perf_counter()
        truth = ground_truth(data, queries, K)
        truth_s = time.perf_counter() - t0
        truth_info[str(dim)] = {"seconds": truth_s, "identities": data.n_ids,
                                "groups": data.n_groups}
        print(f"  ground truth (IndexFlatIP per chunk, incl. data generation): "
              f"{truth_s:.1f} s", flush=True)
        del data, queries
        for spec in plan(args, dim):
            name, params = spec["kind"], spec_params(spec)
            if spec["needs_bytes"] > args.skip_flat_above:
                note = (f"skipped (memory: {spec['needs_bytes'] / MB:,.0f} MB > "
                        f"{args.skip_flat_above / MB:,.0f} MB)")
                rows.append({"dim": dim, "index": name, "params": params, "skipped": note})
                print(f"  {name} {params}: {note}", flush=True)
                continue
            try:
                res = run_isolated(spec, args)
            except (BrokenProcessPool, MemoryError, RuntimeError) as exc:
                note = f"failed ({type(exc).__name__})"
                rows.append({"dim": dim, "index": name, "params": params, "skipped": note,
                             "error": str(exc)})
                print(f"  {name} {params}: {note}: {exc}", flush=True)
                continue
            for s in res["searches"]:
                extra = " ".join(f"{k}={v}" for k, v in s["params"].items())
                row = {
                    "dim": dim, "index": name, "params": " ".join(p for p in (params, extra) if p),
                    "gallery": args.gallery, "queries": args.queries, "k": K,
                    "build_seconds": res["build_seconds"],
                    "generate_seconds": res["generate_seconds"],
                    "search_seconds": s["seconds"],
                    "seconds_per_1k_queries": s["seconds"] / args.queries * 1000,
                    "index_mb": res["index_bytes"] / MB,
                    "index_bytes_method": res["index_bytes_method"],
                    "peak_rss_mb": res["peak_rss_mb"],
                    "baseline_rss_mb": res["baseline_rss_mb"],
                    "recall_at_10": recall_at(s["indices"], truth, 10),
                    "recall_at_100": recall_at(s["indices"], truth, K),
                }
                row["meets_target"] = meets(row, args)
                rows.append(row)
                print(f"  {name} {row['params']}: build {fmt(row['build_seconds'], '.1f')} s, "
                      f"{row['seconds_per_1k_queries']:.3f} s/1k queries, "
                      f"recall@100 {row['recall_at_100']:.4f}", flush=True)

    print()
    print(format_table(rows))
    if args.json:
        result = {
            "benchmark": "search",
            "quick": args.quick,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "targets": {"recall_at_100": args.target_recall,
                        "seconds_per_1k_queries": args.target_seconds,
                        "peak_rss_mb": args.target_mb},
            "ground_truth": truth_info,
            "machine": machine_info(),
            "versions": {"numpy": np.__version__, "faiss": faiss.__version__},
            "rows": rows,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
