"""Market-1501 ranking evaluation: tfmarket.retrieval.metrics vs torchreid's ``evaluate_rank``.

    .venv/bin/python benchmarks/evaluate.py [--queries 3368] [--gallery 15913] [--repeats 3]
        [--junk 0] [--no-torchreid] [--rank-cy-pyx PATH] [--json out.json]
    .venv/bin/python benchmarks/evaluate.py --quick    # 300 x 1,500, 1 round: a smoke run

What it measures: seconds and peak memory of one Market-1501 evaluation (CMC ranks 1-50 and
mAP) of a query x gallery distance matrix, by

* ``tfmarket``: :func:`tfmarket.retrieval.metrics.evaluate_ranking` (NumPy, queries in chunks of
  ``--chunk-size``, default 256), the function that takes a distance matrix;
* ``torchreid Python``: ``evaluate_rank(..., use_metric_cuhk03=False, use_cython=False)`` of
  torchreid (``eval_market1501``: a full ``np.argsort`` of the matrix, then a Python loop over
  the queries), the reference of the speed-up and agreement columns;
* ``torchreid Cython``: the same ``evaluate_rank`` with ``use_cython=True`` (``rank_cy``'s
  ``eval_market1501_cy``), when that extension can be had (see below); otherwise the script
  prints why and leaves the row out.

Inputs (``make_inputs``, seeded): labels with Market-1501's test-set structure, scaled with
``--queries`` / ``--gallery``. At the default size: 750 query identities (Market-1501's 750
test identities; with identity 0 torchreid counts 751 in the gallery) over 6 cameras; each
identity has 2-6 cameras and at most one query per camera where it can (3,368 queries, 4.5
per identity); its 13,120 gallery images (17.5 per identity) lie in the same cameras, at least
two of them, so every query has a true match under another camera, and most also have
same-camera images of their identity, which the protocol must ignore; 2,793 distractors of
identity 0 (Market's ``0000``) in random cameras, kept as negatives. Distances are float32,
drawn per gallery kind: other identities ~ N(1.0, 0.12), distractors ~ N(0.95, 0.12),
same identity and camera ~ N(0.20, 0.08) (near-duplicates: counted, they would sit at rank 1),
true matches ~ N(m, 0.12) with m uniform in [0.25, 0.75] per query (easy to hard queries; a
simulation of this model at the full size gives mAP ~0.65 and Rank-1 ~0.9, about a ResNet50
baseline's); clipped to [0.001, 2]. Every row is then made tie-free (equal float32 values
are moved apart by a few ulps, in gallery order), so the ranking does not depend on the sort's
tie rule (tfmarket sorts stably, torchreid with NumPy's default unstable sort) and the results
must agree exactly, up to float rounding.

Junk (identity -1): Market-1501's bounding_box_test/ also holds 3,819 junk detections, but
both torchreid's ``Market1501`` loader (``if pid == -1: continue``) and tfmarket's reader
(:mod:`tfmarket.data.market1501`) drop them when they read the folder: Market's 15,913-image
gallery (19,732 - 3,819) has none, so by default (``--junk 0``) neither has any and all rows
get the very same arrays (float32 [Q, G] distances, int64 identities and cameras). The only
"junk" the Market protocol then handles per query is the same-identity same-camera entries,
which both remove. ``--junk N`` (e.g. 3,819) appends N identity -1 images in random cameras,
close-ish to every query (~ N(0.8, 0.15)): tfmarket gets the Q x (G + N) matrix and drops them
itself (:mod:`tfmarket.retrieval.metrics` removes gallery identity -1 for every query); torchreid's
protocol only ignores same-identity same-camera entries and would count them as negatives, so its
rows get the Q x G matrix without those columns, which is what its loader hands it. Then the results
must still agree, and the tfmarket row does 1 + N/G times the work.

torchreid: from the ``torchreid`` package (``pip install --no-deps torchreid==0.2.5``, whose
module is ``torchreid/reid/metrics/rank.py``; older deep-person-reid checkouts have
``torchreid/metrics/rank.py``, also found). That file needs only NumPy, but importing it as
``torchreid.reid.metrics.rank`` runs the package's ``__init__``, which imports its models,
data and engine (torch, torchvision, OpenCV, gdown...). So the file is loaded on its own with
``importlib`` (found with ``importlib.util.find_spec``, which runs nothing), with its
``rank_cy`` import made to fail fast. The PyPI sdist of 0.2.5 ships
``rank_cylib/setup.py`` but not ``rank_cy.pyx``, so the Cython row needs either a compiled
``rank_cy*.so`` already in the package's ``rank_cylib/`` (as ``python setup.py develop`` of a
deep-person-reid checkout leaves it) or ``--rank-cy-pyx PATH`` (its
``torchreid/metrics/rank_cylib/rank_cy.pyx``), which is built once with Cython and the C
compiler, as torchreid's own ``rank_cylib/setup.py`` does (``pip install cython``), into
``--build-dir`` (default ~/.cache/tfmarket/rank_cy), and reused. The row is then torchreid's
own dispatch: its ``evaluate_rank`` with ``use_cython=True`` calling that ``evaluate_cy``.

Timing and memory: every measurement runs in a fresh spawned process, so nothing is shared or
warm between rows: it imports the implementation, loads the inputs from ``.npy`` files, then
times one call with ``time.perf_counter`` (sorting included; loading and imports not). In each
of ``--repeats`` rounds the rows take turns (order reversed every other round); a row's
seconds are the median over rounds with min-max, and its speed-up is the median of per-round
ratios torchreid-Python-seconds / its seconds. Peak memory is what the evaluation itself adds:
the process's peak resident set size during the call minus its resident size just before it
(inputs loaded, imports done). Linux: the high-water mark is reset right before the call
(``echo 5 > /proc/self/clear_refs``) and read from ``VmHWM``; where that is not possible,
``ru_maxrss`` after minus before (can under-report if loading peaked higher). Unlike
tracemalloc it counts every page the call touches (NumPy, Python objects, C allocations); a
row's value is the largest over its rounds. The inputs themselves (Q x G x 4 bytes: 214 MB at
full size) are not in it; the JSON also has each process's whole peak.

Agreement: mAP and CMC ranks 1..``--max-rank`` (50) of each row against torchreid Python,
max absolute difference <= 1e-6 (``--tolerance``). torchreid Python returns its CMC in float32
(differences ~1e-8); ``rank_cy`` also keeps each AP and sums the mAP in C ``float``, which over
3,368 queries can be off by about 1e-6 (the column shows the measured difference).
"meets target" (tfmarket only): <= 3 s (``--target-seconds``), <= 1.5 GB peak
(``--target-mb`` 1536), >= 20x torchreid Python (``--target-speedup``), same results; the
targets are for the full 3,368 x 15,913 size.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Market-1501's test split (as torchreid and tfmarket read it: junk -1 dropped at load time).
MARKET_QUERIES = 3368
MARKET_GALLERY = 15913
MARKET_IDS = 750
MARKET_DISTRACTORS = 2793
MARKET_JUNK = 3819  # bounding_box_test/ images of identity -1, not part of the 15,913
CAMERAS = 6
JUNK_ID, DISTRACTOR_ID = -1, 0

# Distance model: (mean, std) per kind of gallery image for a query.
NEGATIVE, DISTRACTOR, JUNK, SAME_CAMERA, TRUE_MATCH = range(5)
MEAN = np.array([1.0, 0.95, 0.80, 0.20, np.nan], dtype=np.float32)
STD = np.array([0.12, 0.12, 0.15, 0.08, 0.12], dtype=np.float32)
TRUE_MATCH_MEAN = (0.25, 0.75)  # per query, uniform: easy ... hard
CLIP = (1e-3, 2.0)
GEN_CHUNK = 256  # query rows generated at a time (fixed: the data must not depend on options)

IMPLS = ("tfmarket", "torchreid-python", "torchreid-cython")
LABELS = {
    "tfmarket": "tfmarket evaluate_ranking",
    "torchreid-python": "torchreid Python (eval_market1501)",
    "torchreid-cython": "torchreid Cython (rank_cy)",
}
REFERENCE = "torchreid-python"
ARRAYS = ("distmat", "q_pids", "g_pids", "q_cams", "g_cams")
RANK_CY_MODULES = ("torchreid.reid.metrics.rank_cylib.rank_cy",
                   "torchreid.metrics.rank_cylib.rank_cy")
MB = 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=None,
                        help=f"number of queries, default {MARKET_QUERIES} (--quick: 300)")
    parser.add_argument("--gallery", type=int, default=None,
                        help="gallery images (identities + distractors, no junk), default "
                             f"{MARKET_GALLERY} (--quick: 1,500)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds, default 3 (--quick: 1)")
    parser.add_argument("--ids", type=int, default=0,
                        help="query identities (0: 750 scaled by queries / 3,368)")
    parser.add_argument("--distractors", type=int, default=-1,
                        help="identity-0 gallery images (-1: 2,793 scaled by gallery / 15,913)")
    parser.add_argument("--junk", type=int, default=0,
                        help="identity -1 images appended to tfmarket's gallery (torchreid's "
                             "rows get the matrix without them, as its loader drops them); "
                             f"Market's bounding_box_test/ has {MARKET_JUNK:,}; default 0")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--max-rank", type=int, default=50, help="CMC length, default 50")
    parser.add_argument("--chunk-size", type=int, default=0,
                        help="tfmarket's query chunk (0: its default, 256)")
    parser.add_argument("--no-torchreid", action="store_true", help="only the tfmarket row")
    parser.add_argument("--rank-cy-pyx", help="torchreid's rank_cy.pyx, to build the Cython row "
                                              "(the PyPI sdist does not ship it)")
    parser.add_argument("--build-dir", default=None,
                        help="where rank_cy is built and cached (default "
                             "~/.cache/tfmarket/rank_cy)")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="max |difference| of mAP and CMC to agree, default %(default)s")
    parser.add_argument("--target-seconds", type=float, default=3.0)
    parser.add_argument("--target-mb", type=float, default=1536.0)
    parser.add_argument("--target-speedup", type=float, default=20.0)
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="300 queries x 1,500 gallery, 1 round (unless given): a smoke "
                             "run")
    return parser


# --- inputs -----------------------------------------------------------------------------------


def make_labels(num_query: int, num_gallery: int, *, ids: int = 0, distractors: int = -1,
                junk: int = 0, cameras: int = CAMERAS,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Market-1501-structured identities and cameras (int64), gallery and queries shuffled."""
    n_ids = ids or max(1, round(MARKET_IDS * num_query / MARKET_QUERIES))
    if distractors < 0:
        distractors = round(MARKET_DISTRACTORS * num_gallery / MARKET_GALLERY)
    identified = num_gallery - distractors
    if num_query < n_ids:
        raise ValueError(f"{num_query} queries cannot cover {n_ids} identities")
    if identified < 2 * n_ids:
        raise ValueError(f"gallery of {num_gallery} minus {distractors} distractors leaves "
                         f"{identified} images, fewer than 2 per identity ({n_ids} identities)")
    if cameras < 2:
        raise ValueError("need at least 2 cameras (true matches come from another camera)")
    q_per_id = 1 + rng.multinomial(num_query - n_ids, np.full(n_ids, 1 / n_ids))
    g_per_id = 2 + rng.multinomial(identified - 2 * n_ids, np.full(n_ids, 1 / n_ids))
    n_cams = np.clip(np.minimum(q_per_id, cameras) + rng.integers(0, 2, n_ids), 2, cameras)
    q_pids, q_cams, g_pids, g_cams = [], [], [], []
    for i in range(n_ids):
        cams = rng.permutation(cameras)[:n_cams[i]] + 1
        q_pids.append(np.full(q_per_id[i], i + 1))
        q_cams.append(np.resize(cams, q_per_id[i]))  # one query per camera, cycling if more
        g_pids.append(np.full(g_per_id[i], i + 1))
        # Two cameras always, so each query has a match under another camera; the rest at
        # random among the identity's cameras, the query cameras included.
        g_cams.append(np.concatenate([cams[:2], rng.choice(cams, g_per_id[i] - 2)]))
    other = distractors + junk
    g_pids.append(np.repeat([DISTRACTOR_ID, JUNK_ID], [distractors, junk]))
    g_cams.append(rng.integers(1, cameras + 1, other))
    q_order = rng.permutation(num_query)
    g_order = rng.permutation(num_gallery + junk)
    return {
        "q_pids": np.concatenate(q_pids).astype(np.int64)[q_order],
        "q_cams": np.concatenate(q_cams).astype(np.int64)[q_order],
        "g_pids": np.concatenate(g_pids).astype(np.int64)[g_order],
        "g_cams": np.concatenate(g_cams).astype(np.int64)[g_order],
    }


def untie_rows(dist: np.ndarray) -> np.ndarray:
    """Float32 rows (all >= 0) with equal values moved apart by the fewest ulps, in place.

    Non-negative float32 values order like their int32 bit patterns; per row, sorted patterns
    ``b`` become ``cummax(b - i) + i``: strictly increasing, unchanged where already distinct.
    """
    order = np.argsort(dist, axis=1, kind="stable")
    bits = np.take_along_axis(dist, order, axis=1).view(np.int32).astype(np.int64)
    step = np.arange(dist.shape[1], dtype=np.int64)
    bits = np.maximum.accumulate(bits - step, axis=1) + step
    np.put_along_axis(dist, order, bits.astype(np.int32).view(np.float32), axis=1)
    return dist


def make_inputs(num_query: int = MARKET_QUERIES, num_gallery: int = MARKET_GALLERY, *,
                ids: int = 0, distractors: int = -1, junk: int = 0, cameras: int = CAMERAS,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded Market-1501-like evaluation inputs (see the module docstring).

    Returns:
        dict: ``distmat`` float32 [Q, G + junk] (tie-free rows), ``q_pids``, ``q_cams``
        int64 [Q], ``g_pids``, ``g_cams`` int64 [G + junk] (identity 0 = distractor,
        -1 = junk).
    """
    rng = np.random.default_rng(seed)
    out = make_labels(num_query, num_gallery, ids=ids, distractors=distractors, junk=junk,
                      cameras=cameras, rng=rng)
    q_pids, q_cams, g_pids, g_cams = (out[k] for k in ("q_pids", "q_cams", "g_pids", "g_cams"))
    true_mean = rng.uniform(*TRUE_MATCH_MEAN, num_query).astype(np.float32)
    base = np.where(g_pids == JUNK_ID, JUNK,
                    np.where(g_pids == DISTRACTOR_ID, DISTRACTOR, NEGATIVE))
    dist = np.empty((num_query, len(g_pids)), dtype=np.float32)
    for s in range(0, num_query, GEN_CHUNK):
        e = min(s + GEN_CHUNK, num_query)
        same = g_pids[None, :] == q_pids[s:e, None]
        kind = np.where(same, TRUE_MATCH, base[None, :])
        kind[same & (g_cams[None, :] == q_cams[s:e, None])] = SAME_CAMERA
        mean = np.where(kind == TRUE_MATCH, true_mean[s:e, None], MEAN[kind])
        rows = rng.standard_normal(kind.shape, dtype=np.float32)
        rows *= STD[kind]
        rows += mean
        dist[s:e] = untie_rows(np.clip(rows, *CLIP))
    out["distmat"] = dist
    return out


def drop_junk(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs without gallery identity -1, as torchreid's Market1501 loader leaves them."""
    keep = inputs["g_pids"] != JUNK_ID
    return {**inputs, "distmat": np.ascontiguousarray(inputs["distmat"][:, keep]),
            "g_pids": inputs["g_pids"][keep], "g_cams": inputs["g_cams"][keep]}


def describe_inputs(inputs: dict[str, np.ndarray]) -> dict:
    """Counts that show the structure: identities, distractors, junk, matches per query."""
    q_pids, g_pids = inputs["q_pids"], inputs["g_pids"]
    same = g_pids[None, :] == q_pids[:, None]
    same_cam = same & (inputs["g_cams"][None, :] == inputs["q_cams"][:, None])
    cross = (same & ~same_cam).sum(axis=1)
    return {
        "queries": int(len(q_pids)),
        "gallery": int(len(g_pids)),
        "query_identities": int(len(np.unique(q_pids))),
        "gallery_identities": int(len(np.unique(g_pids[g_pids > 0]))),
        "distractors": int(np.sum(g_pids == DISTRACTOR_ID)),
        "junk": int(np.sum(g_pids == JUNK_ID)),
        "cameras": int(len(np.unique(inputs["g_cams"]))),
        "true_matches_per_query": float(cross.mean()),
        "same_camera_matches_per_query": float(same_cam.sum(axis=1).mean()),
        "queries_with_same_camera_matches": int(np.sum(same_cam.any(axis=1))),
        "valid_queries": int(np.sum(cross > 0)),
    }


def save_inputs(inputs: dict[str, np.ndarray], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        np.save(folder / f"{name}.npy", inputs[name])


def load_inputs(folder: str | Path) -> dict[str, np.ndarray]:
    return {name: np.load(Path(folder) / f"{name}.npy") for name in ARRAYS}


# --- torchreid --------------------------------------------------------------------------------


def find_torchreid_rank() -> Path:
    """Path of torchreid's rank.py, found without importing (running) the torchreid package."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchreid is not installed (pip install --no-deps torchreid==0.2.5)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for rel in ("reid/metrics/rank.py", "metrics/rank.py"):
        if (root / rel).is_file():
            return root / rel
    raise ImportError(f"{root}: no reid/metrics/rank.py or metrics/rank.py")


def torchreid_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchreid")
    except PackageNotFoundError:
        return None


def load_torchreid_rank():
    """torchreid's rank module, loaded from its file alone (numpy is all it needs).

    Its ``from torchreid...rank_cylib.rank_cy import evaluate_cy`` would import the torchreid
    package first (models, data, engine: torch, OpenCV, gdown...); a ``None`` entry in
    ``sys.modules`` makes that import fail at once, which rank.py catches (pure Python then).
    """
    path = find_torchreid_rank()
    saved = {name: sys.modules.get(name) for name in RANK_CY_MODULES}
    try:
        for name in RANK_CY_MODULES:
            sys.modules[name] = None
        spec = importlib.util.spec_from_file_location("_torchreid_rank", path)
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Cython evaluation ... is unavailable"
            spec.loader.exec_module(module)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    return module


def load_extension(path: str | Path):
    spec = importlib.util.spec_from_file_location("rank_cy", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD_SCRIPT = """
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
setup(name="rank_cy", script_args=["build_ext", "--inplace"], ext_modules=cythonize(
    [Extension("rank_cy", ["rank_cy.pyx"], include_dirs=[np.get_include()])], quiet=True))
"""


def rank_cy_extension(rank_path: Path, pyx: str | None,
                      build_dir: str | None) -> tuple[str | None, str]:
    """(path of a compiled rank_cy extension or None, how it was found or why there is none)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    cylib = rank_path.parent / "rank_cylib"
    if not pyx:
        built = sorted(cylib.glob("rank_cy*" + suffix)) + sorted(cylib.glob("rank_cy*.so"))
        if built:
            return str(built[0]), f"compiled extension found in the package: {built[0]}"
        if (cylib / "rank_cy.pyx").is_file():
            pyx = str(cylib / "rank_cy.pyx")
        else:
            return None, (
                f"torchreid {torchreid_version() or '?'} at {rank_path.parent} has "
                f"rank_cylib/{'setup.py' if (cylib / 'setup.py').is_file() else ''} but no "
                "rank_cy.pyx and no compiled rank_cy (its PyPI sdist leaves the .pyx out), so "
                "the Cython evaluator cannot be built; pass --rank-cy-pyx PATH (deep-person-"
                "reid's torchreid/metrics/rank_cylib/rank_cy.pyx) to add this row")
    source = Path(pyx)
    if not source.is_file():
        return None, f"--rank-cy-pyx {pyx}: no such file"
    if importlib.util.find_spec("Cython") is None:
        return None, "Cython is not installed (pip install cython), so rank_cy cannot be built"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return None, f"no C compiler ({compiler!r} not found), so rank_cy cannot be built"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    root = Path(build_dir) if build_dir else Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tfmarket" / "rank_cy"
    folder = root / f"{digest}{suffix.rsplit('.', 1)[0]}"
    target = folder / f"rank_cy{suffix}"
    if target.is_file():
        return str(target), f"built from {source} (cached in {folder})"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "rank_cy.pyx")
    print(f"building rank_cy from {source} in {folder} ...", flush=True)
    proc = subprocess.run([sys.executable, "-c", BUILD_SCRIPT], cwd=folder,
                          capture_output=True, text=True)
    if proc.returncode != 0 or not target.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return None, f"building rank_cy from {source} failed (exit {proc.returncode}): {tail}"
    return str(target), f"built from {source} with Cython (cached in {folder})"


# --- one measurement per spawned process ------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _ru_maxrss_kib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Peak resident memory added between construction and :meth:`added_mb`."""

    def __init__(self):
        self.rss0 = _status_kib("VmRSS")
        self.hwm0 = _status_kib("VmHWM") or _ru_maxrss_kib()  # before the reset below
        self.ru0 = _ru_maxrss_kib()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM (and so ru_maxrss) to the current RSS
            self.method = "VmHWM reset"
        except OSError:
            self.method = "ru_maxrss"
        if self.rss0 is None:
            self.rss0 = self.ru0

    def added_mb(self) -> float:
        if self.method == "VmHWM reset":
            return (_status_kib("VmHWM") - self.rss0) / 1024
        return max(0.0, _ru_maxrss_kib() - self.ru0) / 1024

    def process_peak_mb(self) -> float:
        """The whole process's high-water mark: imports, inputs and the call."""
        now = _status_kib("VmHWM") if self.method == "VmHWM reset" else _ru_maxrss_kib()
        return max(self.hwm0, now) / 1024


def implementation(impl: str, rank_cy_path: str | None = None):
    """A callable (distmat, q_pids, g_pids, q_cams, g_cams, max_rank) -> (mAP, cmc [max_rank])."""
    if impl == "tfmarket":
        from tfmarket.retrieval.metrics import DEFAULT_CHUNK, evaluate_ranking

        def run(d, qp, gp, qc, gc_, max_rank, chunk_size=0):
            res = evaluate_ranking(d, qp, gp, qc, gc_, max_rank=max_rank,
                                   chunk_size=chunk_size or DEFAULT_CHUNK)
            return res["mAP"], res["cmc"]

        return run
    rank = load_torchreid_rank()
    if impl == "torchreid-python":
        def run(d, qp, gp, qc, gc_, max_rank, chunk_size=0):
            cmc, mean_ap = rank.evaluate_rank(d, qp, gp, qc, gc_, max_rank=max_rank,
                                              use_metric_cuhk03=False, use_cython=False)
            return mean_ap, cmc

        return run
    if impl == "torchreid-cython":
        rank.evaluate_cy = load_extension(rank_cy_path).evaluate_cy
        rank.IS_CYTHON_AVAI = True

        def run(d, qp, gp, qc, gc_, max_rank, chunk_size=0):
            cmc, mean_ap = rank.evaluate_rank(d, qp, gp, qc, gc_, max_rank=max_rank,
                                              use_metric_cuhk03=False, use_cython=True)
            return mean_ap, cmc

        return run
    raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")


def measure(impl: str, input_dir: str, max_rank: int, chunk_size: int = 0,
            rank_cy_path: str | None = None) -> dict:
    """One timed evaluation (meant for a fresh process): import, load, reset peak, time."""
    run = implementation(impl, rank_cy_path)
    inputs = load_inputs(input_dir)
    args = [inputs[name] for name in ARRAYS]
    del inputs
    gc.collect()
    memory = PeakMemory()
    start = time.perf_counter()
    mean_ap, cmc = run(*args, max_rank, chunk_size)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mb": memory.added_mb(),
        "memory_method": memory.method,
        "baseline_rss_mb": memory.rss0 / 1024,
        "process_peak_rss_mb": memory.process_peak_mb(),
        "mAP": float(mean_ap),
        "cmc": [float(v) for v in np.asarray(cmc).reshape(-1)],
    }


def measure_isolated(*args) -> dict:
    """:func:`measure` in a fresh spawned process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


# --- report -----------------------------------------------------------------------------------


def max_difference(result: dict, reference: dict, max_rank: int) -> float:
    n = min(max_rank, len(result["cmc"]), len(reference["cmc"]))
    cmc = np.abs(np.subtract(result["cmc"][:n], reference["cmc"][:n]))
    return float(max(abs(result["mAP"] - reference["mAP"]), cmc.max(initial=0.0)))


def summarise(impls: list[str], rounds: list[dict], args) -> list[dict]:
    """One row per implementation: median / spread of seconds, speed-up, agreement, targets."""
    rows = []
    for impl in impls:
        runs = [r[impl] for r in rounds]
        seconds = [r["seconds"] for r in runs]
        first = runs[0]
        row = {
            "implementation": impl, "label": LABELS[impl], "seconds": seconds,
            "seconds_median": statistics.median(seconds), "seconds_min": min(seconds),
            "seconds_max": max(seconds), "peak_mb": max(r["peak_mb"] for r in runs),
            "peak_mb_per_round": [r["peak_mb"] for r in runs],
            "process_peak_rss_mb": max(r["process_peak_rss_mb"] for r in runs),
            "baseline_rss_mb": first["baseline_rss_mb"], "memory_method": first["memory_method"],
            "mAP": first["mAP"], "rank1": first["cmc"][0], "cmc": first["cmc"],
            "deterministic": all(r["mAP"] == first["mAP"] and r["cmc"] == first["cmc"]
                                 for r in runs),
        }
        if REFERENCE in impls:
            ratios = [r[REFERENCE]["seconds"] / r[impl]["seconds"] for r in rounds]
            row.update(speedup=ratios, speedup_median=statistics.median(ratios))
            diff = max_difference(first, rounds[0][REFERENCE], args.max_rank)
            row.update(max_abs_difference=diff, agrees=diff <= args.tolerance)
        if impl == "tfmarket":
            row["meets_target"] = meets(row, args)
        rows.append(row)
    return rows


def meets(row: dict, args) -> str:
    failed = []
    if row["seconds_median"] > args.target_seconds:
        failed.append("time")
    if row["peak_mb"] > args.target_mb:
        failed.append("memory")
    if row.get("speedup_median", np.inf) < args.target_speedup:
        failed.append("speed-up")
    if row.get("agrees") is False:
        failed.append("results differ")
    if failed:
        return "no (" + ", ".join(failed) + ")"
    return "yes" if "speedup_median" in row else "time, memory: yes; speed-up not measured"


def format_table(rows: list[dict], tolerance: float) -> str:
    header = ("implementation", "seconds median", "min-max", "peak MB",
              "speed-up vs torchreid Python", "mAP", "Rank-1", f"agrees ({tolerance:g})",
              "meets target")
    lines = []
    for r in rows:
        if "agrees" not in r:
            agrees = "-"
        elif r["implementation"] == REFERENCE:
            agrees = "reference"
        else:
            agrees = f"{'yes' if r['agrees'] else 'no'} (max diff {r['max_abs_difference']:.1e})"
        lines.append((
            r["label"], f"{r['seconds_median']:.3f}",
            f"{r['seconds_min']:.3f}-{r['seconds_max']:.3f}", f"{r['peak_mb']:,.0f}",
            f"{r['speedup_median']:.1f}x" if "speedup_median" in r else "-",
            f"{r['mAP']:.6f}", f"{r['rank1']:.6f}", agrees, r.get("meets_target", "-"),
        ))
    return render_table(header, lines, left=(0, 7, 8))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = (300, 1500, 1) if args.quick else (MARKET_QUERIES, MARKET_GALLERY, 3)
    args.queries = args.queries or quick[0]
    args.gallery = args.gallery or quick[1]
    args.repeats = args.repeats or quick[2]
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    machine = machine_info()
    print(f"CPU: {machine['cpu']}; {machine['affinity_cpus']} usable cores")

    notes, impls, rank_cy_path, torchreid = [], ["tfmarket"], None, None
    if args.no_torchreid:
        notes.append("torchreid rows skipped (--no-torchreid)")
    else:
        try:
            rank_path = find_torchreid_rank()
            load_torchreid_rank()
            torchreid = {"version": torchreid_version(), "rank_py": str(rank_path)}
            impls.append("torchreid-python")
            rank_cy_path, how = rank_cy_extension(rank_path, args.rank_cy_pyx, args.build_dir)
            if rank_cy_path:
                load_extension(rank_cy_path)  # fails here, not in every worker
                impls.append("torchreid-cython")
                torchreid["rank_cy"] = how
            else:
                notes.append(f"torchreid Cython row skipped: {how}")
        except ImportError as exc:
            notes.append(f"torchreid rows skipped: {exc}")
    for note in notes:
        print(note)

    start = time.perf_counter()
    inputs = make_inputs(args.queries, args.gallery, ids=args.ids, distractors=args.distractors,
                         junk=args.junk, seed=args.seed)
    generate_s = time.perf_counter() - start
    facts = describe_inputs(inputs)
    print(f"inputs ({generate_s:.1f} s to generate, seed {args.seed}): {facts['queries']:,} "
          f"queries of {facts['query_identities']:,} identities x {facts['gallery']:,} gallery "
          f"images ({facts['gallery_identities']:,} identities, {facts['distractors']:,} "
          f"distractors of id 0, {facts['junk']:,} junk of id -1) over {facts['cameras']} "
          f"cameras; per query {facts['true_matches_per_query']:.1f} true matches under other "
          f"cameras and {facts['same_camera_matches_per_query']:.1f} same-camera ones (ignored; "
          f"{facts['queries_with_same_camera_matches']:,} queries have some); "
          f"{facts['valid_queries']:,} valid queries; distmat float32 "
          f"{inputs['distmat'].nbytes / MB:,.0f} MB", flush=True)
    if args.junk:
        print(f"--junk {args.junk}: tfmarket gets the {args.queries:,} x "
              f"{args.gallery + args.junk:,} matrix and drops identity -1 itself; torchreid "
              f"gets the {args.queries:,} x {args.gallery:,} matrix without those columns "
              "(what its Market1501 loader leaves)")
    print(f"{args.repeats} round(s); each measurement in a fresh process, rows taking turns",
          flush=True)

    rounds = []
    with tempfile.TemporaryDirectory(prefix="tfmarket-evaluate-") as tmp:
        folders = {"full": Path(tmp) / "full", "no_junk": Path(tmp) / "no_junk"}
        save_inputs(inputs, folders["full"])
        if args.junk:
            save_inputs(drop_junk(inputs), folders["no_junk"])
        del inputs
        for number in range(args.repeats):
            result = {}
            for impl in impls if number % 2 == 0 else impls[::-1]:
                folder = folders["no_junk" if args.junk and impl != "tfmarket" else "full"]
                result[impl] = measure_isolated(impl, str(folder), args.max_rank,
                                                args.chunk_size, rank_cy_path)
            rounds.append(result)
            print(f"  round {number + 1}/{args.repeats}: " + ", ".join(
                f"{impl} {result[impl]['seconds']:.3f} s" for impl in impls), flush=True)

    rows = summarise(impls, rounds, args)
    print()
    print(f"CPU: {machine['cpu']}")
    print(f"{args.queries:,} queries x {args.gallery:,} gallery"
          + (f" (+ {args.junk:,} junk for tfmarket)" if args.junk else "")
          + f", CMC ranks 1-{args.max_rank}, {args.repeats} round(s); peak MB = resident memory "
          "the call adds above the loaded inputs")
    print(format_table(rows, args.tolerance))
    print(f"targets (tfmarket, at 3,368 x 15,913): <= {args.target_seconds:g} s, "
          f"<= {args.target_mb:,.0f} MB, >= {args.target_speedup:g}x torchreid Python")
    for row in rows:
        if not row["deterministic"]:
            print(f"warning: {row['label']} gave different results in different rounds")
    if args.json:
        import tfmarket

        versions = {"numpy": np.__version__, "tfmarket": tfmarket.__version__,
                    "torchreid": (torchreid or {}).get("version")}
        if "torchreid-cython" in impls:
            import Cython

            versions["cython"] = Cython.__version__
        write_json(args.json, {
            "benchmark": "evaluate", "quick": args.quick,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "inputs": {**facts, "generate_seconds": generate_s},
            "targets": {"seconds": args.target_seconds, "peak_mb": args.target_mb,
                        "speedup_vs_torchreid_python": args.target_speedup},
            "torchreid": torchreid, "notes": notes, "machine": machine,
            "versions": versions, "rows": rows,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
