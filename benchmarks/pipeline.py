"""Training input-pipeline throughput (images/s): tfmarket's tf.data vs a PyTorch DataLoader.

    .venv/bin/python benchmarks/pipeline.py [--data ../shared/data/market1501-course]
        [--sizes 256x128,128x64] [--batches 100] [--workers 2,0] [--json results.json]
    .venv/bin/python benchmarks/pipeline.py --quick      # 5 batches, proves the script runs

Both pipelines read the same course ``train/`` files and do the same per-image work:
decode JPEG, resize to HxW, random horizontal flip, zero-pad 10 + random crop back to HxW,
random erasing (p = 0.5), and deliver float32 batches of P x K = 16 x 4 = 64 images.

* ``tfmarket``: :func:`tfmarket.data.pipeline.train_dataset` (identity-balanced P x K batches,
  parallel ``map`` + prefetch, AUTOTUNE). With ``cache_bytes`` the encoded JPEG bytes are
  held in memory, so no file is opened after start-up (decoding still runs every batch).
  It yields pixel values in [0, 255]; normalisation happens inside the model.
* ``pytorch``: ``torch.utils.data.DataLoader`` with torchvision transforms (PIL open +
  convert RGB, Resize, RandomHorizontalFlip, Pad(10), RandomCrop, ToTensor, Normalize,
  RandomErasing(p=0.5)), batch 64, a P x K identity sampler like torchreid's, and
  ``num_workers`` 2 (as the original PyTorch project ran it) and 0.

Each row warms up (``--warmup`` batches: worker start-up, tf.data autotuning), then times
``--batches`` batches end to end. Set-up time (reading all files into memory for
``cache_bytes``) is reported separately and not counted.

The PyTorch rows run first, before TensorFlow is imported, so that DataLoader workers are
forked from a process without TensorFlow's thread pools.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = "../shared/data/market1501-course"
TORCH_HINT = (
    "PyTorch baseline skipped: torch/torchvision not importable ({error}). Install with\n"
    "    .venv/bin/pip install torch==2.14.1 torchvision==0.29.1\n"
    "(or: pip install -e '.[bench]')"
)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        h, w = item.lower().split("x")
        sizes.append((int(h), int(w)))
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help="Market-1501 folder (course or original layout), default %(default)s"
                        " relative to the repository root")
    parser.add_argument("--sizes", default="256x128,128x64", help="HxW list, default %(default)s")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches per row")
    parser.add_argument("--p", type=int, default=16, help="identities per batch")
    parser.add_argument("--k", type=int, default=4, help="images per identity")
    parser.add_argument("--workers", default="2,0",
                        help="PyTorch DataLoader num_workers values, default %(default)s")
    parser.add_argument("--cache-bytes", choices=("true", "false", "both"), default="true",
                        help="tfmarket rows with cache_bytes on, off or both")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="5 timed batches, 2 warm-up, first 2000 images: a smoke run")
    return parser


# --- data -------------------------------------------------------------------------------------


def load_train(root: Path, limit: int = 0):
    """Course/original training records -> (paths, contiguous labels, attribute targets)."""
    from tfmarket.data.registry import load_dataset
    from tfmarket.data.split import relabel
    from tfmarket.training.data import attribute_targets

    train = load_dataset(root).train
    if limit and len(train) > limit:
        train = train.subset(np.arange(limit))
    labels, _ = relabel(train.pids)
    return train.paths, labels, attribute_targets(train)


def pk_index_stream(labels: np.ndarray, p: int, k: int, batches: int, seed: int = 0):
    """Indices of ``batches`` P x K batches, torchreid RandomIdentitySampler style."""
    rng = np.random.default_rng(seed)
    by_id = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    out: list[int] = []
    while len(out) < batches * p * k:
        for group in rng.permutation(len(by_id)).reshape(-1)[: len(by_id) // p * p].reshape(-1, p):
            for c in group:
                pool = by_id[c]
                out.extend(rng.choice(pool, k, replace=len(pool) < k).tolist())
            if len(out) >= batches * p * k:
                break
    return out[: batches * p * k]


# --- tfmarket ---------------------------------------------------------------------------------


def bench_tfmarket(paths, labels, targets, height, width, args, cache_bytes: bool) -> dict:
    from tfmarket.data.pipeline import train_dataset

    start = time.perf_counter()
    ds = train_dataset(
        paths, labels, targets, height=height, width=width, p=args.p, k=args.k, seed=0,
        pad=10, flip=True, erase_prob=0.5, cache_bytes=cache_bytes,
    )
    iterator = iter(ds)
    setup = time.perf_counter() - start
    images = None
    for _ in range(args.warmup):
        images, _ = next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        images, _ = next(iterator)
    seconds = time.perf_counter() - start
    assert images is not None and tuple(images.shape) == (args.p * args.k, height, width, 3)
    return {
        "pipeline": f"tfmarket (cache_bytes={cache_bytes})",
        "framework": "tensorflow",
        "cache_bytes": cache_bytes,
        "size": f"{height}x{width}",
        "batch": args.p * args.k,
        "batches": args.batches,
        "seconds": seconds,
        "setup_seconds": setup,
        "images_per_second": args.batches * args.p * args.k / seconds,
    }


# --- PyTorch ----------------------------------------------------------------------------------


def import_torch():
    """Returns (torch, torchvision) or raises ImportError/RuntimeError with the reason."""
    import torch
    import torchvision  # noqa: F401  (fails here on a torch/torchvision mismatch)
    from torchvision import transforms  # noqa: F401

    return torch, torchvision


class _Images:
    """Map-style dataset: index -> (normalised float tensor [3, H, W], label)."""

    def __init__(self, paths, labels, transform):
        self.paths = paths
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
        return self.transform(image), int(self.labels[index])


def bench_torch(paths, labels, height, width, args, workers: int) -> dict:
    import torch
    from torchvision import transforms as T

    transform = T.Compose([
        T.Resize((height, width)),
        T.RandomHorizontalFlip(),
        T.Pad(10),
        T.RandomCrop((height, width)),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        T.RandomErasing(p=0.5, value=0),  # 0 after Normalize = the mean pixel, like torchreid
    ])
    batch = args.p * args.k
    total = args.warmup + args.batches
    sampler = pk_index_stream(np.asarray(labels), args.p, args.k, total)
    loader_kwargs = {}
    if workers > 0 and "tensorflow" in sys.modules:
        # Forking a process that runs TensorFlow's thread pools can hang the workers.
        loader_kwargs["multiprocessing_context"] = "forkserver"
    loader = torch.utils.data.DataLoader(
        _Images(paths, labels, transform), batch_size=batch, sampler=sampler,
        num_workers=workers, drop_last=True, **loader_kwargs,
    )
    start = time.perf_counter()
    iterator = iter(loader)
    images = None
    for _ in range(args.warmup):
        images, _ = next(iterator)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.batches):
        images, _ = next(iterator)
    seconds = time.perf_counter() - start
    del iterator
    assert images is not None and tuple(images.shape) == (batch, 3, height, width)
    return {
        "pipeline": f"pytorch DataLoader (workers={workers})",
        "framework": "pytorch",
        "workers": workers,
        "size": f"{height}x{width}",
        "batch": batch,
        "batches": args.batches,
        "seconds": seconds,
        "setup_seconds": setup,  # includes the warm-up batches (worker start-up)
        "images_per_second": args.batches * batch / seconds,
    }


# --- report -----------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    baseline = {
        r["size"]: r["images_per_second"]
        for r in rows if r["framework"] == "pytorch" and r.get("workers") == 2
    }
    header = ("pipeline", "size", "images/s", "vs PyTorch (workers=2)")
    lines = []
    for r in rows:
        base = baseline.get(r["size"])
        ratio = f"{r['images_per_second'] / base:.2f}x" if base else "n/a"
        lines.append((r["pipeline"], r["size"], f"{r['images_per_second']:.1f}", ratio))
    return render_table(header, lines, left=(0,))




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limit = 0
    if args.quick:
        args.batches, args.warmup, limit = 5, 2, 2000
    sizes = parse_sizes(args.sizes)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    root = Path(args.data)
    if not root.is_absolute():
        root = (REPO / root).resolve()
    paths, labels, targets = load_train(root, limit)
    print(f"data: {root} ({len(paths)} training images, {int(labels.max()) + 1} identities)"
          f"; batch {args.p}x{args.k}; {args.warmup} warm-up + {args.batches} timed batches")

    rows: list[dict] = []
    notes: list[str] = []
    versions = {}
    if not args.no_torch:
        try:
            torch, torchvision = import_torch()
            versions.update(torch=torch.__version__, torchvision=torchvision.__version__)
        except (ImportError, RuntimeError, OSError) as exc:
            notes.append(TORCH_HINT.format(error=f"{type(exc).__name__}: {exc}"))
            print(notes[-1])
        else:
            for height, width in sizes:
                for w in workers:
                    rows.append(bench_torch(paths, labels, height, width, args, w))
                    print(f"  {rows[-1]['pipeline']} {height}x{width}: "
                          f"{rows[-1]['images_per_second']:.1f} images/s", flush=True)

    import tensorflow as tf

    versions["tensorflow"] = tf.__version__
    caches = {"true": [True], "false": [False], "both": [True, False]}[args.cache_bytes]
    for height, width in sizes:
        for cache in caches:
            rows.append(bench_tfmarket(paths, labels, targets, height, width, args, cache))
            print(f"  {rows[-1]['pipeline']} {height}x{width}: "
                  f"{rows[-1]['images_per_second']:.1f} images/s "
                  f"(set-up {rows[-1]['setup_seconds']:.1f} s)", flush=True)

    order = {s: i for i, s in enumerate(f"{h}x{w}" for h, w in sizes)}
    rows.sort(key=lambda r: (order[r["size"]], r["framework"] != "tensorflow"))
    print()
    print(format_table(rows))
    if args.json:
        result = {
            "benchmark": "pipeline",
            "data": str(root),
            "quick": args.quick,
            "p": args.p,
            "k": args.k,
            "warmup": args.warmup,
            "machine": machine_info(),
            "versions": versions,
            "rows": rows,
            "notes": notes,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    main()
