"""The Parquet embedding store: a folder of shards that many workers write at once (``gallery
embed --engine ray``) plus a small manifest, read by ``gallery index`` / ``search`` and the
Python API like a ``.npz`` store.

    STORE/
      manifest.json          written last: a folder without it is a run that did not finish
      part-000000.parquet    one shard per block of the sorted file list (rows in that order)
      part-000001.parquet
      errors.csv             file,error: images that could not be read (header only if none)

A shard's columns: ``file`` (string), ``embedding`` (fixed-size list of D float32,
L2-normalised), ``attributes`` (fixed-size list of C int8: predicted, annotation encoding)
and ``prob_<head>`` (fixed-size list of float32: the head's probabilities). The manifest
(JSON) holds ``format``, ``version``, ``model``, ``attribute_columns`` [C], ``heads``
{head: width}, ``embedding_dim``, ``flip_test``, ``images`` (rows in all shards), ``errors``
(rows of errors.csv) and ``shards`` [{"file", "rows"}] in file order, so the shards read in
that order give the sorted file list, as a ``.npz`` store holds it.

A store is a local folder or any URI pyarrow opens (``s3://bucket/gallery``,
``gs://bucket/gallery``, ``hdfs://...``). pyarrow is imported only by the functions here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tfmarket.errors import DataError, TfmarketError

MANIFEST = "manifest.json"
ERRORS = "errors.csv"
FORMAT = "tfmarket-parquet-store"
VERSION = 1


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (an object store or other pyarrow filesystem), not for a
    local path."""
    return "://" in str(path)


def filesystem(path: str | Path):
    """(pyarrow filesystem, path inside it) for a local path or a URI pyarrow knows."""
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise TfmarketError(f"{path}: Parquet stores need pyarrow; install it with: pip "
                            f"install 'tfmarket[ray]'") from None

    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(str(path))
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise TfmarketError(f"{path}: not a filesystem pyarrow can open ({exc})") from None
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def is_parquet_store(path: str | Path) -> bool:
    """True when ``path`` is a folder (or URI) holding a store's manifest, or a local folder
    that looks like an unfinished one (shards, no manifest): :func:`read_manifest` says
    which."""
    if not is_uri(path):
        folder = Path(path)
        return folder.is_dir() and ((folder / MANIFEST).is_file()
                                    or any(folder.glob("part-*.parquet")))
    import pyarrow.fs as pafs

    fs, root = filesystem(path)
    return fs.get_file_info(f"{root.rstrip('/')}/{MANIFEST}").type == pafs.FileType.File


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


# --- writing -----------------------------------------------------------------------------------


def shard_table(store: dict):
    """A store dict (:func:`tfmarket.serving.store.store_rows`: ``files`` [n], ``embedding``
    [n, D], ``attributes`` [n, C], ``prob_<head>`` [n, k]) -> a pyarrow Table, one row an
    image."""
    import pyarrow as pa

    def fixed(values: np.ndarray, dtype) -> pa.Array:
        values = np.ascontiguousarray(values, dtype=dtype)
        width = values.shape[1] if values.ndim == 2 else 1
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)

    columns = {"file": pa.array([str(f) for f in store["files"]], pa.string()),
               "embedding": fixed(store["embedding"], np.float32),
               "attributes": fixed(store["attributes"], np.int8)}
    for key in sorted(k for k in store if k.startswith("prob_")):
        columns[key] = fixed(store[key], np.float32)
    return pa.table(columns)


def write_shard(fs, root: str, name: str, table) -> int:
    """Writes one shard; returns its size in bytes.

    On a local disk it is written under a temporary name and renamed, so a reader (or a
    retried task writing the same shard) never sees half a file and a retry leaves one copy;
    object stores make an object visible only once it is whole, so there it is written in
    place. Shard names are fixed by their block of the file list, so a block written twice
    (a retried task) is the same file written twice.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    final = join(root, name)
    local = isinstance(fs, pafs.LocalFileSystem)
    target = f"{final}.{uuid.uuid4().hex}.tmp" if local else final
    pq.write_table(table, target, filesystem=fs)
    if local:
        os.replace(target, final)
    return int(fs.get_file_info(final).size)


def write_text(fs, root: str, name: str, text: str) -> int:
    data = text.encode()
    with fs.open_output_stream(join(root, name)) as out:
        out.write(data)
    return len(data)


def prepare_folder(path: str | Path):
    """(filesystem, root) of a new store at ``path``; TfmarketError when something is there
    already (a finished store or another run's shards would mix with this one's)."""
    import pyarrow.fs as pafs

    fs, root = filesystem(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise TfmarketError(f"{path}: is a file; a Parquet store is a folder (--out)")
    if info.type == pafs.FileType.Directory:
        if fs.get_file_info(pafs.FileSelector(root, recursive=False)):
            raise TfmarketError(f"{path}: already exists and is not empty; remove it or "
                                f"choose another --out")
    fs.create_dir(root, recursive=True)
    return fs, root


def remove_leftovers(fs, root: str) -> int:
    """Deletes temporary files that killed workers left behind; returns how many."""
    import pyarrow.fs as pafs

    found = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=False))
             if i.path.endswith(".tmp")]
    for path in found:
        fs.delete_file(path)
    return len(found)


def write_errors(fs, root: str, errors: list[tuple[str, str]]) -> int:
    """errors.csv: one ``file,error`` row per unreadable image (header only when none)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "error"])
    writer.writerows(sorted(errors))
    return write_text(fs, root, ERRORS, text.getvalue())


def write_manifest(fs, root: str, manifest: dict) -> int:
    return write_text(fs, root, MANIFEST, json.dumps(
        {"format": FORMAT, "version": VERSION, **manifest}, indent=1) + "\n")


# --- reading -----------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> dict:
    """The manifest of the store at ``path``; DataError naming the store when it is missing
    (an unfinished run) or not a tfmarket store's."""
    fs, root = filesystem(path)
    try:
        with fs.open_input_stream(join(root, MANIFEST)) as stream:
            manifest = json.loads(stream.read())
    except FileNotFoundError:
        raise DataError(f"{path}: no {MANIFEST}: the embedding run that wrote this folder did "
                        f"not finish; run it again into an empty --out") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: {MANIFEST} is not a tfmarket Parquet store's")
    if manifest.get("version", 0) > VERSION:
        raise DataError(f"{path}: store version {manifest['version']} is newer than this "
                        f"tfmarket reads ({VERSION}); upgrade tfmarket")
    return manifest


def _fixed_to_numpy(column, width: int, dtype) -> np.ndarray:
    """A fixed-size-list column (pyarrow ChunkedArray) -> numpy [rows, width]."""
    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.astype(dtype, copy=False).reshape(-1, width)


def iter_shards(path: str | Path, columns: tuple[str, ...] = ("embedding",),
                manifest: dict | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields each shard's ``columns`` in file order, one shard at a time: ``embedding``
    float32 [n, D], ``attributes`` int8 [n, C], ``prob_<head>`` float32 [n, k], ``file`` [n].

    DataError naming the shard when it is missing or does not hold the manifest's rows.
    """
    import pyarrow.parquet as pq

    manifest = manifest or read_manifest(path)
    fs, root = filesystem(path)
    widths = {"embedding": (manifest["embedding_dim"], np.float32),
              "attributes": (len(manifest["attribute_columns"]), np.int8),
              **{f"prob_{h}": (k, np.float32) for h, k in manifest["heads"].items()}}
    for shard in manifest["shards"]:
        name = join(root, shard["file"])
        try:
            table = pq.read_table(name, columns=list(columns), filesystem=fs)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: shard {shard['file']} unreadable ({exc})") from None
        if table.num_rows != shard["rows"]:
            raise DataError(f"{path}: shard {shard['file']} holds {table.num_rows} rows, the "
                            f"manifest says {shard['rows']}")
        out = {}
        for column in columns:
            if column == "file":
                out[column] = np.array(table.column(column).to_pylist(), dtype=str)
            else:
                width, dtype = widths[column]
                out[column] = _fixed_to_numpy(table.column(column), width, dtype)
        del table
        yield out


def load_parquet_store(path: str | Path) -> dict:
    """The whole store as the dict a ``.npz`` store loads to (``files``, ``embedding``,
    ``attributes``, ``attribute_columns``, ``model``, ``prob_<head>``, ``flip_test`` when
    set); each array is allocated once and filled shard by shard."""
    manifest = read_manifest(path)
    n = int(manifest["images"])
    heads = manifest["heads"]
    columns = ("file", "embedding", "attributes", *(f"prob_{h}" for h in heads))
    store = {
        "embedding": np.empty((n, manifest["embedding_dim"]), np.float32),
        "attributes": np.empty((n, len(manifest["attribute_columns"])), np.int8),
        **{f"prob_{h}": np.empty((n, k), np.float32) for h, k in heads.items()},
    }
    files: list[np.ndarray] = []
    start = 0
    for shard in iter_shards(path, columns, manifest):
        rows = len(shard["file"])
        if start + rows > n:
            raise DataError(f"{path}: the shards hold more rows than the manifest's {n}")
        files.append(shard["file"])
        for key, array in store.items():
            array[start:start + rows] = shard[key]
        start += rows
    if start != n:
        raise DataError(f"{path}: the shards hold {start} rows, the manifest says {n}")
    store["files"] = np.concatenate(files) if files else np.zeros((0,), str)
    store["attribute_columns"] = np.array(manifest["attribute_columns"], dtype=str)
    store["model"] = np.array(str(manifest.get("model", "")))
    if manifest.get("flip_test"):  # as a .npz store holds it: only when set
        store["flip_test"] = np.array(True)
    return store


def sample_embeddings(path: str | Path, count: int, seed: int = 0,
                      manifest: dict | None = None) -> np.ndarray:
    """float32 [min(count, N), D]: rows drawn without replacement from the whole store
    (seeded), read shard by shard, so only the sample and one shard are in memory."""
    manifest = manifest or read_manifest(path)
    n, dim = int(manifest["images"]), int(manifest["embedding_dim"])
    count = min(int(count), n)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
    out = np.empty((count, dim), np.float32)
    start = filled = 0
    for shard in iter_shards(path, ("embedding",), manifest):
        rows = len(shard["embedding"])
        lo, hi = np.searchsorted(picked, [start, start + rows])
        out[filled:filled + hi - lo] = shard["embedding"][picked[lo:hi] - start]
        filled += hi - lo
        start += rows
    return out


def store_bytes(path: str | Path) -> int:
    """Bytes of every file in the store folder."""
    import pyarrow.fs as pafs

    fs, root = filesystem(path)
    return int(sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(root))
                   if i.type == pafs.FileType.File))
