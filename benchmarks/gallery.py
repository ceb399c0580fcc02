"""Gallery embedding on one machine: ``gallery embed --engine local`` against ``--engine ray``
(several actor pools), and the peak memory of ``gallery index`` from a Parquet (Ray) store
against a ``.npz`` store of the same embeddings.

    .venv/bin/python benchmarks/gallery.py --model exports/cpu/model.onnx \\
        [--images ../shared/data/market1501-course/test] [--count 1500] [--rounds 3] \\
        [--index-rows 1000000] [--dim 2048] [--json benchmarks/results/gallery.json]
    .venv/bin/python benchmarks/gallery.py --model M --quick  # 200 images, 1 round, 20k x 256

Embedding: the first ``--count`` images of ``--images`` (sorted; linked, never copied, into a
temporary folder) are embedded by each row in a fresh process, the CLI as a user runs it:
``local`` (this process, onnxruntime on every core, a ``.npz`` store) and one ``ray AxT`` row
per ``--ray-rows`` entry (A actors of T onnxruntime threads each, or ``default``: neither
option given, the pool a user gets; on a local Ray instance the command starts and stops
itself; a Parquet store). A Ray run also prints where its actors' time went (seconds summed
over actors: reading with Pillow's check, waiting for decoded batches, the model, writing).
Rows take turns, their order alternating
every round, for ``--rounds`` rounds; a row's images/s is the median over rounds with min-max.
Two rates: "command" = images / the process's wall time (Python, TensorFlow and Ray start-up,
actor start-up, listing, writing: what a user waits for), and "embedding" = the command's own
measure of its work (local: listing to store written, TensorFlow imported before; ray: first
shard started to last shard written, from the actors' clocks). "vs local" is the median of
per-round ratios of embedding rates, each ratio from one round.

Index memory: ``--index-rows`` x ``--dim`` random L2-normalised float32 embeddings with
Market-1501's attribute columns and probabilities, written once as a Parquet store (shards of
``--shard-rows``, by the functions Ray's workers use) and as a ``.npz`` store (streamed to
disk: neither ever exists whole in this process); then ``gallery index`` runs on each in a
fresh process under ``/usr/bin/time -v`` (its maximum resident set size, wall time) with
``--index-args`` (default ivfpq-refine with m 128: the kind docs/distributed.md recommends for
millions, with 64 cells so that assigning a million vectors stays short; memory hardly
depends on the cells). The data files go to
``--workdir`` (default: a temporary folder, deleted afterwards; about 2 x rows x dim x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "market1501-course" / "test"
INDEX_ARGS = "--kind ivfpq-refine --nlist 64 --m 128 --nprobe 16"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported model (.onnx)")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of real crops")
    p.add_argument("--count", type=int, default=1500, help="images embedded per run")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every row")
    p.add_argument("--ray-rows", default="1x1,1x2,default",
                   help="Ray rows as ACTORSxTHREADS or 'default' (no --actors/--threads: "
                        "what a user gets), comma-separated (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--index-rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--shard-rows", type=int, default=4096,
                   help="rows a Parquet shard (gallery embed's largest shard: 4096)")
    p.add_argument("--index-args", default=INDEX_ARGS,
                   help="gallery index options for both stores (default %(default)r)")
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--skip-index", action="store_true")
    p.add_argument("--workdir", help="where the stores go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep --workdir's files")
    p.add_argument("--json", help="write every measurement to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="200 images, 1 round, a 20,000 x 256 index with nlist 64, m 16 "
                        "(smoke run)")
    return p


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tfmarket.gallery", *args]


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --- embedding ---------------------------------------------------------------------------------


def link_images(source: Path, count: int, folder: Path) -> list[Path]:
    from tfmarket.data.filenames import list_images

    chosen = list_images(source)[:count]
    folder.mkdir(parents=True)
    for path in chosen:
        (folder / path.name).symlink_to(path.resolve())
    return chosen


def embed_rows(args) -> list[dict]:
    rows = [{"row": "local", "args": []}]
    for spec in args.ray_rows.split(","):
        if spec.strip().lower() == "default":  # what a user gets without --actors/--threads
            rows.append({"row": "ray default", "args": ["--engine", "ray"]})
            continue
        actors, threads = (int(v) for v in spec.lower().split("x"))
        rows.append({"row": f"ray {actors}x{threads}",
                     "args": ["--engine", "ray", "--actors", str(actors),
                              "--threads", str(threads)]})
    return rows


def run_embed(row: dict, args, images: Path, out: Path) -> dict:
    """One run of one row in a fresh process: its wall time and its own summary."""
    target = out / ("store.npz" if row["row"] == "local" else "store")
    cmd = command("embed", "--model", args.model, "--images", str(images), "--out",
                  str(target), "--batch-size", str(args.batch_size), "--json", *row["args"])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=environment())
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    seconds = summary.get("embedding_seconds", summary["seconds"])
    run = {"wall_s": wall, "embed_s": seconds, "images": summary["images"],
           "command_rate": summary["images"] / wall, "embed_rate": summary["images"] / seconds}
    if "actors" in summary:  # where the actors' time went (ray)
        run.update(actors=summary["actors"], threads=summary["threads"],
                   actor_seconds=summary["actor_seconds"])
    return run


def bench_embed(args, work: Path) -> list[dict]:
    images = work / "images"
    chosen = link_images(Path(args.images), args.count, images)
    print(f"embedding {len(chosen):,} images of {args.images} with {args.model}", flush=True)
    rows = embed_rows(args)
    for row in rows:
        row["runs"] = []
    for r in range(args.rounds):
        order = rows if r % 2 == 0 else rows[::-1]
        for row in order:
            run = run_embed(row, args, images, work)
            row["runs"].append(run)
            stages = run.get("actor_seconds")
            where = (f"; actors {run['actors']}x{run['threads']}: " + ", ".join(
                f"{k} {stages[k]:.1f} s" for k in ("read", "decode", "model", "write"))
                if stages else "")
            print(f"  round {r + 1}: {row['row']}: {run['embed_rate']:.1f} images/s embedding, "
                  f"{run['command_rate']:.1f} end to end ({run['wall_s']:.1f} s){where}",
                  flush=True)
    local = rows[0]["runs"]
    for row in rows:
        runs = row["runs"]
        row["ratio_to_local"] = [a["embed_rate"] / b["embed_rate"]
                                 for a, b in zip(runs, local, strict=True)]
    return rows


def spread(values: list[float], spec: str = ".1f") -> str:
    text = format(statistics.median(values), spec)
    if len(values) > 1:
        text += f" ({format(min(values), spec)}-{format(max(values), spec)})"
    return text


def embed_table(rows: list[dict]) -> str:
    header = ("row", "embedding images/s", "vs local", "command images/s", "command s")
    lines = [(r["row"], spread([x["embed_rate"] for x in r["runs"]]),
              spread(r["ratio_to_local"], ".2f") + "x",
              spread([x["command_rate"] for x in r["runs"]]),
              spread([x["wall_s"] for x in r["runs"]]))
             for r in rows]
    return render_table(header, lines)


# --- index memory ------------------------------------------------------------------------------


def _chunk(rows: int, dim: int, index: int, heads: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([7, index])
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = {"embedding": emb, "attributes": rng.integers(1, 3, (rows, 27), dtype=np.int8)}
    for head, width in heads.items():
        out[f"prob_{head}"] = rng.random((rows, width), dtype=np.float32)
    return out


def _npy_member(archive: zipfile.ZipFile, name: str, dtype, shape):
    """An open ``name.npy`` member of the zip with its header written, ready for raw rows."""
    from tfmarket.serving.npzfile import ZIP_EPOCH

    info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
    member = archive.open(info, "w", force_zip64=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
              "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(member, header)
    return member


def write_stores(args, work: Path) -> tuple[Path, Path]:
    """The same synthetic embeddings as a Parquet store and as a .npz store, chunk by chunk:
    the embeddings never exist whole here (the small columns do, ~200 MB at 1M rows)."""
    from tfmarket.attributes import COLUMNS, MARKET
    from tfmarket.serving import parquet_store as ps

    n, dim, size = args.index_rows, args.dim, args.shard_rows
    heads = MARKET.head_sizes
    fs, root = ps.prepare_folder(work / "store")
    files = np.array([f"/gallery/{i:08d}.jpg" for i in range(n)])
    small = {"attributes": np.empty((n, 27), np.int8),
             **{f"prob_{h}": np.empty((n, w), np.float32) for h, w in heads.items()}}
    shards = []
    npz = work / "store.npz"
    with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with _npy_member(zf, "files", files.dtype, files.shape) as member:
            member.write(files.tobytes())
        # A zip is written one member at a time: the embeddings stream into theirs (and into
        # the Parquet shards), the small columns are kept and written after.
        with _npy_member(zf, "embedding", np.float32, (n, dim)) as member:
            for i, start in enumerate(range(0, n, size)):
                rows = min(size, n - start)
                chunk = _chunk(rows, dim, i, heads)
                member.write(chunk["embedding"].tobytes())
                for key, array in small.items():
                    array[start:start + rows] = chunk[key]
                name = f"part-{i:06d}.parquet"
                ps.write_shard(fs, root, name, ps.shard_table(
                    {"files": files[start:start + rows], **chunk}))
                shards.append({"file": name, "rows": rows})
                del chunk
        for key, value in (*small.items(), ("attribute_columns", np.array(COLUMNS)),
                           ("model", np.array("/synthetic/model.onnx"))):
            with _npy_member(zf, key, value.dtype, value.shape) as member:
                member.write(np.ascontiguousarray(value).tobytes())
    ps.write_errors(fs, root, [])
    ps.write_manifest(fs, root, {
        "model": "/synthetic/model.onnx", "engine": "benchmark",
        "attribute_columns": list(COLUMNS), "heads": heads, "embedding_dim": dim,
        "flip_test": False, "images": n, "errors": 0, "shards": shards})
    return work / "store", npz


def run_index(store: Path, args, work: Path) -> dict:
    out = work / f"{store.name}.faiss"
    cmd = ["/usr/bin/time", "-v", *command("index", str(store), *shlex.split(args.index_args),
                                           "--out", str(out), "--json")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=environment())
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    out.unlink(missing_ok=True)
    return {"store": store.name, "peak_rss_mb": int(peak.group(1)) / 1024, "wall_s": wall,
            "store_mb": _size(store) / 2**20}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


def bench_index(args, work: Path) -> list[dict]:
    t0 = time.perf_counter()
    parquet, npz = write_stores(args, work)
    print(f"index: wrote {args.index_rows:,} x {args.dim} as a Parquet store and a .npz "
          f"store in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for store, label in ((npz, ".npz store (today's path: loaded whole)"),
                         (parquet, "Parquet store (Ray shards, streamed)")):
        row = run_index(store, args, work)
        row["row"] = label
        rows.append(row)
        print(f"  {label}: peak RSS {row['peak_rss_mb']:,.0f} MB, {row['wall_s']:.0f} s",
              flush=True)
    return rows


def index_table(rows: list[dict], args) -> str:
    header = ("gallery index from", "peak RSS MB", "wall s", "store MB")
    lines = [(r["row"], f"{r['peak_rss_mb']:,.0f}", f"{r['wall_s']:.0f}",
              f"{r['store_mb']:,.0f}") for r in rows]
    return render_table(header, lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.count, args.rounds, args.index_rows, args.dim = 200, 1, 20_000, 256
        if args.index_args == INDEX_ARGS:
            args.index_args = "--kind ivfpq-refine --nlist 64 --m 16 --nprobe 16"
    info = machine_info()
    print(f"CPU: {info['cpu']}, {info['affinity_cpus'] or info['cpus']} cores", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tfmarket-gallery-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "gallery", "quick": args.quick, "machine": info,
              "args": {k: v for k, v in vars(args).items() if k != "json"}}
    try:
        if not args.skip_embed:
            result["embed"] = bench_embed(args, work)
        if not args.skip_index:
            result["index"] = bench_index(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    if "embed" in result:
        print(f"embedding {args.count:,} images, {args.rounds} rounds ({info['cpu']}):")
        print(embed_table(result["embed"]))
        print()
    if "index" in result:
        print(f"gallery index {args.index_args} of {args.index_rows:,} x {args.dim}:")
        print(index_table(result["index"], args))
    if args.json:
        import ray

        result["versions"] = {"ray": ray.__version__, "numpy": np.__version__}
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
