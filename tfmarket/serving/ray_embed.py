"""``gallery embed --engine ray``: a gallery embedded on a Ray cluster (or a laptop's local Ray)
with Ray Data, into a Parquet store (:mod:`tfmarket.serving.parquet_store`).

The sorted image list is cut into shards (contiguous blocks); a Ray dataset holds one row per
shard (its number and files), and ``map_batches`` hands the rows to an actor pool
(``ActorPoolStrategy``), each actor holding one embedder from
:func:`tfmarket.serving.embed.open_embedder` (the model's runtime, threads and flip test, as
``rank``). An actor reads its shard's files (local paths, or any URI pyarrow opens),
decodes them with the shared :mod:`tfmarket.preprocess` ops, runs the model and writes the
shard's Parquet file itself; it returns one small row (rows written, unreadable files,
timings) to the driver, which writes ``errors.csv`` and, last, the manifest.

Why a dataset of file lists rather than ``ray.data.read_images``: read_images decodes with
Pillow and resizes its own way, so its pixels (and embeddings) would differ from ``rank``'s
and the local engine's; here every engine decodes with the same TensorFlow ops (bytes ->
``decode_image`` -> ``resize_image``), so the same file gives the same embedding (tests:
within 1e-5). It also makes each shard's file name a function of its block of the list:

Exactly once: Ray restarts a killed actor and retries its task (``max_restarts`` and
``max_task_retries`` unbounded: Ray Data's defaults, set here on purpose); a retried shard
is written again under the same name (to a temporary file renamed into place on a local
disk), so a block of images is in the store once whichever attempt finished, and the
driver keeps one result per shard. Temporary files of killed attempts are deleted at the end.

Ray is imported only here, lazily: ``--engine local`` and ``--help`` never load it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tfmarket.errors import DataError, TfmarketError

INSTALL = "pip install 'tfmarket[ray]'"
MAX_SHARD = 4096  # images a shard holds at most (~32 MB of 2048-d embeddings)
MODEL_CACHE_DAYS = 7  # a node's copy of a model no actor has used for this long is deleted


def import_ray():
    """``ray`` with Ray Data, or a TfmarketError saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of the ray package
    except ImportError as exc:
        raise TfmarketError(f"--engine ray needs Ray Data ({exc}); install it with: "
                            f"{INSTALL}") from None
    return ray


# --- the image list ----------------------------------------------------------------------------


def list_image_uris(sources: list[str]) -> list[str]:
    """Sorted, de-duplicated image files of ``sources``: local folders (their images, as
    ``list_images``), local files, or URIs of folders or files (``s3://bucket/crops``).
    DataError for a source that does not exist or holds no image."""
    from tfmarket.data.filenames import IMAGE_SUFFIXES, list_images
    from tfmarket.serving.parquet_store import filesystem, is_uri

    found: set[str] = set()
    for source in sources:
        if not is_uri(source):
            path = Path(source)
            if path.is_dir():
                found.update(str(p) for p in list_images(path))
            elif path.is_file():
                found.add(str(path))
            else:
                raise DataError(f"{source}: no such file or folder")
            continue
        import pyarrow.fs as pafs

        fs, root = filesystem(source)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            found.add(source)
            continue
        if info.type != pafs.FileType.Directory:
            raise DataError(f"{source}: no such file or folder")
        names = sorted(Path(i.path).name for i in fs.get_file_info(pafs.FileSelector(root))
                       if i.type == pafs.FileType.File)
        images = [n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise DataError(f"{source}: no images found")
        found.update(f"{source.rstrip('/')}/{n}" for n in images)
    return sorted(found)


def shard_blocks(count: int, size: int) -> list[tuple[int, int]]:
    """[(start, stop)] cutting ``count`` files into blocks of ``size`` (the last shorter)."""
    return [(s, min(s + size, count)) for s in range(0, count, size)]


def auto_shard_size(count: int, actors: int, batch_size: int) -> int:
    """Images a shard: about 8 shards an actor (so a slow or restarted actor leaves little
    tail), at least one batch, at most :data:`MAX_SHARD`."""
    return int(min(MAX_SHARD, max(batch_size, math.ceil(count / (8 * max(1, actors))))))


def model_files(model_path: str | Path) -> dict[str, bytes]:
    """The files an embedder of ``model_path`` opens: the model, files beside it with its
    stem (OpenVINO's ``.bin``) and ``model_card.json``; sent to every actor, so cluster
    nodes need not see the driver's disk."""
    path = Path(model_path)
    if not path.is_file():
        raise TfmarketError(f"{path}: model file not found")
    names = [p for p in path.parent.iterdir()
             if p.is_file() and (p.stem == path.stem or p.name == "model_card.json")]
    return {p.name: p.read_bytes() for p in sorted(names)}


def local_model(files: dict[str, bytes], name: str) -> Path:
    """Writes the model files once per machine (``$TMPDIR/tfmarket-ray-models/<hash>``,
    created by an atomic rename, so actors, their restarts and later runs share one copy);
    returns the model's path. Copies unused for :data:`MODEL_CACHE_DAYS` are deleted."""
    import shutil

    digest = hashlib.sha256()
    for key in sorted(files):
        digest.update(key.encode() + b"\0" + files[key])
    cache = Path(tempfile.gettempdir()) / "tfmarket-ray-models"
    folder = cache / digest.hexdigest()[:20]
    stale = time.time() - MODEL_CACHE_DAYS * 86400
    for old in cache.glob("*") if cache.is_dir() else []:
        try:
            if old != folder and old.stat().st_mtime < stale:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # another actor removed it first
            pass
    if (folder / name).is_file():
        os.utime(folder)  # in use: not stale
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent))
        for key, data in files.items():
            (staging / key).write_bytes(data)
        try:
            os.rename(staging, folder)
        except OSError:  # another actor got there first
            shutil.rmtree(staging, ignore_errors=True)
    return folder / name


# --- the actor ---------------------------------------------------------------------------------


class EmbedShard:
    """Embeds and writes shards: the callable class Ray Data runs in each actor of the pool
    (and a plain class: tests call it directly).

    Input batch (numpy): ``shard`` int [B], ``files`` [B] lists of paths/URIs. Output batch:
    one row per shard: ``shard``, ``file`` (its Parquet file, "" when no image could be
    read), ``rows``, ``bytes``, ``errors`` (JSON [[file, reason]]), ``start`` / ``end`` (Unix
    seconds), ``host``, ``pid`` and the shard's seconds by stage: ``read_s`` (reading and
    Pillow's check), ``decode_s`` (waiting for decoded batches), ``model_s``, ``write_s``.
    """

    def __init__(self, model_files: dict[str, bytes] | list, model_name: str, out: str, *,
                 runtime: str = "auto", threads: int = 1, flip_test: bool = False,
                 batch_size: int = 64):
        from tfmarket.console import import_tensorflow_quietly
        from tfmarket.serving.embed import open_embedder
        from tfmarket.serving.parquet_store import filesystem

        if isinstance(model_files, list):  # [ObjectRef] from the driver (see _run)
            import ray

            model_files = ray.get(model_files[0])
        tf = import_tensorflow_quietly()
        try:  # TensorFlow only decodes here: keep it to the actor's share of the CPUs
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised (a plain call in a TF process)
            pass
        self.tf = tf
        self.threads = max(1, int(threads))
        self.batch_size = int(batch_size)
        self.embedder = open_embedder(local_model(model_files, model_name), runtime,
                                      threads, flip_test)
        self.fs, self.root = filesystem(out)
        self.sources: dict[tuple[str, str], object] = {}  # (scheme, bucket) -> filesystem
        self.clock = {"decode": 0.0, "model": 0.0}  # seconds of the shard being embedded
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
        spec = tf.TensorSpec([self.embedder.height, self.embedder.width, 3], tf.uint8)
        self.decode_fn = tf.function(
            lambda data: tf.map_fn(self.decode, data, fn_output_signature=spec,
                                   parallel_iterations=self.threads),
            input_signature=[tf.TensorSpec([None], tf.string)])
        # Once-per-actor costs paid here, as loading the model is, not in the first shard:
        # tracing the decoder (~0.3 s) and the imports of the Pillow check and the writer.
        self.decode_batch([])
        import PIL.Image  # noqa: F401
        import pyarrow.parquet  # noqa: F401

    def __call__(self, batch: dict) -> dict:
        rows = [self.embed_shard(int(shard), [str(f) for f in files])
                for shard, files in zip(batch["shard"], batch["files"], strict=True)]
        return {key: np.array([r[key] for r in rows]) for key in rows[0]}

    def embed_shard(self, shard: int, files: list[str]) -> dict:
        from tfmarket.serving.parquet_store import shard_table, write_shard
        from tfmarket.serving.store import store_rows

        start = time.time()
        self.clock = {"decode": 0.0, "model": 0.0}
        blobs, errors = self.read(files)
        read = time.time()
        outputs, good = self.run(blobs, errors)
        ran = time.time()
        name, size = "", 0
        if good:
            table = shard_table(store_rows(good, outputs, self.embedder.schema))
            name = f"part-{shard:06d}.parquet"
            size = write_shard(self.fs, self.root, name, table)
        end = time.time()
        return {"shard": shard, "file": name, "rows": len(good), "bytes": size,
                "errors": json.dumps(errors), "start": start, "end": end,
                "host": socket.gethostname(), "pid": os.getpid(),
                "read_s": read - start, "decode_s": self.clock["decode"],
                "model_s": self.clock["model"], "write_s": end - ran}

    def read(self, files: list[str]) -> tuple[dict[str, bytes], list[list[str]]]:
        """{file: its bytes} of the files that decode (Pillow, as the local engine's check),
        and [[file, reason]] for the others."""
        from tfmarket.data.check import image_problem

        def load(name: str):
            try:
                data = self.read_bytes(name)
            except OSError as exc:
                return None, f"cannot read: {exc}"
            return data, image_problem(io.BytesIO(data))

        with ThreadPoolExecutor(max(4, 2 * self.threads)) as pool:
            loaded = list(pool.map(load, files))
        blobs, errors = {}, []
        for name, (data, problem) in zip(files, loaded, strict=True):
            if problem:
                errors.append([name, problem])
            else:
                blobs[name] = data
        return blobs, errors

    def read_bytes(self, name: str) -> bytes:
        """A local file's or a URI's bytes (one pyarrow filesystem per bucket or host)."""
        from tfmarket.serving.parquet_store import filesystem, is_uri

        if not is_uri(name):
            return Path(name).read_bytes()
        scheme, _, rest = name.partition("://")
        host, _, key = rest.partition("/")
        if (scheme, host) not in self.sources:
            self.sources[scheme, host] = filesystem(name)[0]
        # Inside its filesystem an object store's path is "bucket/key", a file:// or HDFS
        # one the absolute path.
        path = f"/{key}" if scheme in ("file", "hdfs", "viewfs") else rest
        with self.sources[scheme, host].open_input_stream(path) as stream:
            return stream.read()

    def run(self, blobs: dict[str, bytes], errors: list[list[str]]):
        """(outputs {name: [n, ...]}, the n files they belong to): the model's outputs for
        every file TensorFlow decodes; the ones it refuses are added to ``errors``."""
        tf = self.tf
        try:
            return self.infer(list(blobs.values())), list(blobs)
        except tf.errors.OpError:
            pass
        good = {}
        for name, data in blobs.items():  # rare: find the files Pillow read but TF does not
            try:
                self.decode(tf.constant(data))
                good[name] = data
            except tf.errors.OpError as exc:
                errors.append([name, f"cannot decode: {_op_message(exc.message)}"])
        return self.infer(list(good.values())), list(good)

    def decode(self, data):
        from tfmarket.preprocess import decode_image, resize_image

        return resize_image(decode_image(data), self.embedder.height, self.embedder.width)

    def infer(self, blobs: list[bytes]) -> dict[str, np.ndarray]:
        """Encoded images -> the model's outputs [n, ...], decoded and resized by the same ops
        as ``tfmarket.preprocess.load_image`` (which reads the file first), in batches.

        The next batch decodes on a second thread while the model runs on this one (both
        release the GIL), as the local engine's tf.data prefetch does; the decoding function
        is traced once per actor, not once per shard (a tf.data pipeline a shard cost
        ~0.1 s of tracing and start-up, 5x the decoding itself)."""
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self.embedder.output_names}
        if not blobs:
            return {n: np.zeros((0, 0), np.float32) for n in parts}
        chunks = [blobs[i:i + self.batch_size] for i in range(0, len(blobs), self.batch_size)]
        pending = self.decoder.submit(self.decode_batch, chunks[0])
        for i in range(len(chunks)):
            t0 = time.perf_counter()
            images = pending.result()  # a decoding error is raised here, as with tf.data
            t1 = time.perf_counter()
            if i + 1 < len(chunks):
                pending = self.decoder.submit(self.decode_batch, chunks[i + 1])
            for key, value in self.embedder.run(images).items():
                parts[key].append(value)
            self.clock["decode"] += t1 - t0
            self.clock["model"] += time.perf_counter() - t1
        return {key: np.concatenate(value) for key, value in parts.items()}

    def decode_batch(self, blobs: list[bytes]) -> np.ndarray:
        """Encoded images -> uint8 [n, height, width, 3] (one traced TensorFlow function)."""
        return self.decode_fn(self.tf.constant(blobs, dtype=self.tf.string)).numpy()


def _op_message(text: str) -> str:
    """TensorFlow's error without its op decorations ("{{function_node ...}} Unknown image
    file format. ... [Op:DecodeImage] name: " -> "Unknown image file format. ...")."""
    import re

    return re.sub(r"\{\{.*?\}\}\s*", "", text).split(" [Op:")[0].strip()


# --- the driver --------------------------------------------------------------------------------


def connect(ray, address: str | None, verbose: bool = False) -> bool:
    """Joins the cluster at ``address`` (``auto``, ``ray://head:10001``) or starts a local Ray;
    True when this call started it (and should shut it down). An already initialised Ray
    (a notebook's, a test's) is used as it is."""
    if ray.is_initialized():
        return False
    kwargs = {"logging_level": logging.INFO if verbose else logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new instance, even where `ray start` left one (--address auto)
            ray.init(address="local", include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise TfmarketError(f"cannot start or join Ray at {address or 'a local instance'}: "
                            f"{exc}") from None
    return True


def embed_with_ray(model: str | Path, sources: list[str], out: str, *,
                   address: str | None = None, actors: int = 0, threads: int = 1,
                   runtime: str = "auto", flip_test: bool = False, batch_size: int = 64,
                   shard_size: int = 0, verbose: bool = False) -> dict:
    """Embeds the images of ``sources`` on Ray into the Parquet store ``out``.

    Args:
        model: an exported model file (sent to the actors: nodes need not see it).
        sources: local folders or files, or URIs pyarrow opens, listed by this process and
            read by the actors (so paths must be ones every node sees).
        out: the new store's folder or URI (every node writes its shards there).
        actors: actor-pool size (0: the cluster's CPUs // ``threads``).
        threads: onnxruntime and TensorFlow threads per actor (the CPUs Ray reserves for it).
        shard_size: images per shard (0: :func:`auto_shard_size`).

    Returns:
        The summary: images, errors, shards, actors, seconds and images/s (whole command, and
        "embedding": first shard start to last shard end), store bytes, and
        ``actor_seconds`` (:func:`stage_seconds`: where the actors' time went).
    """
    from tfmarket.serving import parquet_store as ps
    from tfmarket.serving.embed import open_embedder

    ray = import_ray()
    began = time.perf_counter()
    threads = max(1, int(threads))
    paths = list_image_uris(sources)
    # Opened here too: a bad model fails before any cluster work, and one probe image gives
    # the outputs' widths for the manifest.
    probe = open_embedder(model, runtime, 1, flip_test)
    widths = {k: v.shape[1] for k, v in probe.run(
        np.zeros((1, probe.height, probe.width, 3), np.uint8)).items()}
    schema, model_name = probe.schema, probe.path.name
    del probe
    fs, root = ps.prepare_folder(out)
    try:
        started = connect(ray, address, verbose)
        try:
            results = _run(ray, paths, out, model, model_name, actors=actors, threads=threads,
                           runtime=runtime, flip_test=flip_test, batch_size=batch_size,
                           shard_size=shard_size, verbose=verbose)
        finally:
            if started:
                ray.shutdown()
    except BaseException:
        fs.delete_dir(root)  # nothing half-written: the folder was empty before
        raise
    shards, errors = results["shards"], results["errors"]
    ps.remove_leftovers(fs, root)
    ps.write_errors(fs, root, errors)
    manifest = {"model": str(Path(model).resolve()), "engine": "ray",
                "attribute_columns": list(schema.columns),
                "heads": {h: widths[h] for h in schema.head_sizes},
                "embedding_dim": widths["embedding"], "flip_test": bool(flip_test),
                "images": sum(s["rows"] for s in shards), "errors": len(errors),
                "shards": [{"file": s["file"], "rows": s["rows"]} for s in shards]}
    ps.write_manifest(fs, root, manifest)
    seconds = time.perf_counter() - began
    span = results["span"]
    images = manifest["images"]
    summary = {
        "out": str(out), "engine": "ray", "images": images, "errors": len(errors),
        "errors_file": ps.join(str(out), ps.ERRORS) if errors else None,
        "shards": len(shards), "actors": results["actors"], "threads": threads,
        "hosts": results["hosts"],
        "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
        "embedding_seconds": round(span, 2),
        "embedding_images_per_s": round(images / span, 1) if span > 0 else None,
        "store_bytes": ps.store_bytes(out),
        "actor_seconds": results["stages"],
    }
    print(f"gallery embed (ray): {images:,} images, {summary['images_per_s']:,.1f} images/s "
          f"({summary['seconds']:.1f} s), {len(errors):,} unreadable, store "
          f"{summary['store_bytes'] / 1e6:,.1f} MB in {len(shards)} shards", flush=True,
          file=sys.stderr)
    return summary


def _run(ray, paths: list[str], out: str, model, model_name: str, *, actors: int,
         threads: int, runtime: str, flip_test: bool, batch_size: int,
         shard_size: int, verbose: bool) -> dict:
    """The Ray Data part: the dataset of shards, the actor pool, one result per shard."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if not actors:
        actors = max(1, cpus // threads)
    size = shard_size or auto_shard_size(len(paths), actors, batch_size)
    blocks = shard_blocks(len(paths), size)
    print(f"gallery embed (ray): {len(paths):,} images in {len(blocks)} shards of up to "
          f"{size:,}, {actors} actor(s) x {threads} thread(s) on {cpus} CPU(s)",
          flush=True, file=sys.stderr)
    items = [{"shard": i, "files": paths[a:b]} for i, (a, b) in enumerate(blocks)]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    embedded = ds.map_batches(
        EmbedShard, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
        # The model goes to the object store once; inside a list, so Ray hands the actor the
        # reference (resolved in __init__) and its restarts need no copy of the bytes.
        fn_constructor_kwargs={"model_files": [ray.put(model_files(model))],
                               "model_name": model_name, "out": str(out), "runtime": runtime,
                               "threads": threads, "flip_test": flip_test,
                               "batch_size": batch_size})
    # Ray Data restarts a killed pool actor and retries its tasks without limit by default
    # (max_restarts=-1, max_task_retries=-1); exactly-once relies on that (and on each shard's
    # fixed name), and tests/test_ray_gallery.py kills an actor to check it. They are not
    # passed here: Ray 2.60 deprecates passing them through map_batches.
    done: dict[int, dict] = {}
    try:
        for row in embedded.iter_rows():
            done[int(row["shard"])] = row  # a retried shard reports once more: keep one
    except Exception as exc:  # noqa: BLE001 - Ray wraps a worker's error in its own types
        if verbose:
            raise
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise TfmarketError(f"the Ray run failed: {lines[-1] if lines else type(exc).__name__}"
                            f" (--verbose shows Ray's whole report)") from None
    missing = sorted(set(range(len(blocks))) - set(done))
    if missing:  # pragma: no cover - Ray Data returns every row or raises
        raise TfmarketError(f"the Ray run returned no result for shards {missing[:10]}")
    shards = [{"file": str(done[i]["file"]), "rows": int(done[i]["rows"])}
              for i in range(len(blocks)) if int(done[i]["rows"])]
    errors = [tuple(e) for i in range(len(blocks)) for e in json.loads(done[i]["errors"])]
    starts = [float(r["start"]) for r in done.values()]
    ends = [float(r["end"]) for r in done.values()]
    span = max(ends) - min(starts) if done else 0.0
    return {"shards": shards, "errors": errors, "span": span, "actors": actors,
            "hosts": len({str(r["host"]) for r in done.values()}),
            "stages": stage_seconds(list(done.values()), min(starts) if done else 0.0)}


def stage_seconds(rows: list[dict], first: float) -> dict:
    """Where the actors' time went, summed over shards: reading (with Pillow's check),
    waiting for decoded batches, the model, writing; and per actor (process) its first
    shard's start and last shard's end, seconds after the run's first shard started."""
    totals = {k: round(sum(float(r[f"{k}_s"]) for r in rows), 2)
              for k in ("read", "decode", "model", "write")}
    per_actor: dict[str, list[float]] = {}
    for r in rows:
        key = f"{r['host']}:{int(r['pid'])}"
        a, b = per_actor.get(key, [math.inf, -math.inf])
        per_actor[key] = [min(a, float(r["start"])), max(b, float(r["end"]))]
    return {**totals, "actors": {k: [round(a - first, 2), round(b - first, 2)]
                                 for k, (a, b) in sorted(per_actor.items())}}
