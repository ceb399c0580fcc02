"""The Python API: an exported model with its card and its calibrated rules, as one object.

    import tfmarket
    model = tfmarket.load("exports/demo")            # the export folder (or its .onnx/.tflite)
    out = model.predict(["q1.jpg", "q2.jpg"])        # or a uint8 array [N, H, W, 3], or a folder
    out.embeddings                                    # float32 [N, D], L2-normalised
    out.attributes                                    # pandas DataFrame, the schema's columns
    hits = model.search(out, gallery="crops/", topk=10, where="upred, backpack")
    hits.files, hits.distances                        # [N, k] ranked file names and distances
    model.search(out, gallery="gallery/")             # a store of `gallery embed` (.npz, Parquet)

This is the one code path ``python -m tfmarket.rank`` runs too (:mod:`tfmarket.serving.ranking`
goes through :class:`ExportedModel`): the same decoding and resizing
(:mod:`tfmarket.preprocess`, as in training), flip test, attribute rule
(``attribute_rule.json`` beside the model, written by ``python -m tfmarket.calibrate``, else
sigmoid >= 0.5 / argmax) and retrieval rule (``retrieval.json``, else cosine distance).

Importing this module, or ``import tfmarket`` and ``tfmarket.load``, imports no TensorFlow:
the model runs in onnxruntime (LiteRT for a ``.tflite`` file; OpenVINO with
``runtime="openvino"``). Decoding image files (and
resizing arrays that are not at the model's size) uses TensorFlow's ops, the ones training used,
so the API and ``rank`` see the same pixels; arrays already at the model's size never load it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.attribute_rule import AttributeRule
from tfmarket.retrieval.retrieval_rule import RetrievalRule

if TYPE_CHECKING:  # annotations only
    import pandas as pd

    from tfmarket.attributes import AttributeSchema

# What an export folder serves, in that order (``int8``: the int8 files first).
FLOAT_MODEL_FILES = ("model.onnx", "model.tflite")
INT8_MODEL_FILES = ("model.int8.onnx", "model.int8.tflite")
MODEL_FILES = FLOAT_MODEL_FILES + INT8_MODEL_FILES


# --- the rules beside a model ------------------------------------------------------------------


def resolve_attribute_rule(choice: str | Path | AttributeRule | None,
                           model: Path) -> tuple[AttributeRule, Path | None]:
    """(the attribute rule, the file it came from or None).

    ``choice``: None = ``attribute_rule.json`` beside ``model`` if there is one, else the plain
    rule; "plain"; a rule file; or an :class:`AttributeRule`.
    """
    from tfmarket.retrieval.attribute_rule import RULE_FILE, load_rule

    if isinstance(choice, AttributeRule):
        return choice, None
    if choice == "plain":
        return AttributeRule(), None
    path = Path(choice) if choice else model.parent / RULE_FILE
    if choice is None and not path.is_file():
        return AttributeRule(), None
    return load_rule(path), path


def resolve_retrieval_rule(choice: str | Path | RetrievalRule | None, model: Path, *,
                           rerank: bool = False, k1: int | None = None, k2: int | None = None,
                           lambda_value: float | None = None
                           ) -> tuple[RetrievalRule, Path | None]:
    """(the retrieval rule, the file it came from or None).

    ``choice``: None = ``retrieval.json`` beside ``model`` if there is one, else plain cosine
    distance; "plain"; a rule file; or a :class:`RetrievalRule`. ``rerank`` adds k-reciprocal
    re-ranking; ``k1``, ``k2``, ``lambda_value`` override the rule's (as ``rank --rerank``).
    """
    from tfmarket.retrieval.retrieval_rule import RULE_FILE, load_rule

    if isinstance(choice, RetrievalRule):
        rule, path = choice, None
    else:
        path = None if choice == "plain" else Path(choice) if choice else model.parent / RULE_FILE
        if path is not None and choice is None and not path.is_file():
            path = None
        rule = load_rule(path) if path is not None else RetrievalRule()
    if rerank or any(v is not None for v in (k1, k2, lambda_value)):
        rule = dataclasses.replace(
            rule, rerank=rule.rerank or rerank, k1=k1 if k1 is not None else rule.k1,
            k2=k2 if k2 is not None else rule.k2,
            lambda_value=lambda_value if lambda_value is not None else rule.lambda_value)
    return rule, path


def model_file(path: str | Path, int8: bool = False) -> Path:
    """The model file of an export: ``path`` itself when it is a file (``.onnx`` or LiteRT's
    ``.tflite``), else the folder's ``model.onnx`` (``model.int8.onnx`` with ``int8``; the
    ``.tflite`` ones where there is no ONNX model; whichever there is when it is the only one)."""
    path = Path(path)
    if not path.is_dir():
        return path  # a file (the embedder says so when it is missing)
    names = INT8_MODEL_FILES + FLOAT_MODEL_FILES if int8 else MODEL_FILES
    for name in names:
        if (path / name).is_file():
            return path / name
    raise TfmarketError(f"{path}: no exported model ({' or '.join(names)}) in this folder")


def decide_columns(outputs: dict[str, np.ndarray], rule: AttributeRule, schema: AttributeSchema,
                   among: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """int64 [N, C] attribute columns (``schema``'s, annotation encoding; [N, 0] without
    heads) of the N images of ``outputs`` ("embedding" [N, D] and head probabilities) under
    ``rule``.

    A rule that averages over neighbours takes them among the N images themselves, plus
    ``among``'s images when given: ``rank`` decides gallery images among the gallery and
    queries among the queries and the gallery together (the course's test folder holds every
    query image too, so a query + gallery pool for the gallery would count them twice).
    """
    from tfmarket.retrieval.attribute_rule import decide, nearest_neighbours

    heads = schema.head_sizes
    n = len(outputs["embedding"])
    if not heads:
        return np.ones((n, 0), np.int64)
    probs = {h: outputs[h] for h in heads}
    if rule.neighbours == 1:
        return decide(probs, rule, schema=schema)
    if among is None:
        return decide(probs, rule, nearest_neighbours(outputs["embedding"], rule.neighbours),
                      schema)
    pool_probs = {h: np.concatenate([probs[h], among[h]]) for h in heads}
    pool = np.concatenate([outputs["embedding"], among["embedding"]])
    # Only the rows of the N images of the pooled search.
    near = nearest_neighbours(pool, rule.neighbours, rows=np.arange(n))
    return decide(pool_probs, rule, near, schema)


# --- results -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Prediction:
    """What the model says about N images.

    Attributes:
        outputs: ``"embedding"`` float32 [N, D] (L2-normalised) and every attribute head's
            probabilities ([N, C] softmax, [N, 1] sigmoid).
        files: the N image paths, in order (None for images given as an array).
        schema: the model's attribute schema (its heads and columns).
    """

    outputs: dict[str, np.ndarray]
    files: list[str] | None
    schema: AttributeSchema
    decide: Callable[[Prediction], np.ndarray] = dataclasses.field(repr=False)
    _columns: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.outputs["embedding"])

    @property
    def embeddings(self) -> np.ndarray:
        """float32 [N, D], L2-normalised: cosine similarity is the dot product."""
        return self.outputs["embedding"]

    @property
    def names(self) -> list[str]:
        """Each image's file name (its index as text for images given as an array)."""
        if self.files is None:
            return [str(i) for i in range(len(self))]
        return [Path(p).name for p in self.files]

    @property
    def columns(self) -> np.ndarray:
        """int64 [N, C]: the attributes in the schema's columns and annotation encoding
        (Market-1501: 27 columns, 1 = no, 2 = yes, age 1-4), decided by the model's attribute
        rule among these N images; [N, 0] for a re-ID-only model."""
        if self._columns is None:
            self._columns = self.decide(self)
        return self._columns

    @property
    def attributes(self) -> pd.DataFrame:
        """:attr:`columns` as a DataFrame: one column per attribute, indexed by file path (or
        position, for an array)."""
        import pandas as pd

        index = (pd.Index(self.files, name="file") if self.files is not None
                 else pd.RangeIndex(len(self), name="image"))
        return pd.DataFrame(self.columns, columns=list(self.schema.columns), index=index)


@dataclasses.dataclass(frozen=True)
class Ranking:
    """A gallery ranked for each query: what ``rank`` writes and scores.

    Attributes:
        indices: int64 [Nq, k] gallery indices, best first.
        distances: float32 [Nq, k] their distances under the retrieval rule (smaller = closer).
        query, gallery: the embeddings ranked ({"embedding": [N, D]}: expanded when the rule
            expands) or, when ``distmat`` is set, the model outputs it was computed from.
        distmat: float32 [Nq, Ng], when the rule needs the whole matrix (re-ranking, attribute
            distance), else None.
        search_device: "cpu", or the GPUs a faiss index ran on.
    """

    indices: np.ndarray
    distances: np.ndarray
    query: dict[str, np.ndarray]
    gallery: dict[str, np.ndarray]
    distmat: np.ndarray | None
    search_device: str = "cpu"


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The ``topk`` gallery images of each query, best first.

    Attributes:
        queries: the Nq query files (or positions, for an array).
        gallery: the Ng gallery files (or positions).
        indices: int64 [Nq, k] into ``gallery``.
        distances: float32 [Nq, k] under the retrieval rule.
    """

    queries: list[str]
    gallery: list[str]
    indices: np.ndarray
    distances: np.ndarray

    @property
    def files(self) -> np.ndarray:
        """str [Nq, k]: the ranked gallery files."""
        return np.asarray(self.gallery, dtype=object)[self.indices]

    def to_frame(self) -> pd.DataFrame:
        """One row per (query, rank): query, rank (1 = best), file, distance."""
        import pandas as pd

        k = self.indices.shape[1]
        return pd.DataFrame({
            "query": np.repeat(np.asarray(self.queries, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1), len(self.queries)),
            "file": self.files.reshape(-1),
            "distance": self.distances.reshape(-1),
        })


# --- the model ---------------------------------------------------------------------------------


class ExportedModel:
    """An exported tfmarket model (ONNX), its model card's attribute schema, and the attribute
    and retrieval rules it decides and ranks with. Make one with :func:`load`."""

    def __init__(self, path: str | Path, *, flip_test: bool = False, threads: int = 0,
                 attribute_rule: str | Path | AttributeRule | None = None,
                 retrieval: str | Path | RetrievalRule | None = None, runtime: str = "auto"):
        from tfmarket.serving.embed import open_embedder

        self.path = Path(path)
        self.attribute_rule, self.attribute_rule_file = resolve_attribute_rule(
            attribute_rule, self.path)
        self.retrieval_rule, self.retrieval_rule_file = resolve_retrieval_rule(
            retrieval, self.path)
        self.embedder = open_embedder(self.path, runtime, threads=threads, flip_test=flip_test)
        self.schema = self.embedder.schema  # the model's attribute heads (its card's schema)
        self.card = self.embedder.card

    def __repr__(self) -> str:
        return (f"ExportedModel({str(self.path)!r}, {self.height}x{self.width}, "
                f"{self.schema.name} attributes, flip_test={self.flip_test})")

    @property
    def height(self) -> int:
        return self.embedder.height

    @property
    def width(self) -> int:
        return self.embedder.width

    @property
    def flip_test(self) -> bool:
        return self.embedder.flip_test

    @property
    def providers(self) -> list[str]:
        """What runs the model: onnxruntime's execution providers in use order, or the
        runtime and device (e.g. "OpenVINO CPU")."""
        return self.embedder.providers

    # --- images -> outputs ---

    def predict(self, images, *, batch_size: int = 64, progress: str | None = None,
                check_files: bool = True) -> Prediction:
        """Embeddings and attribute probabilities of ``images``.

        Args:
            images: image file paths (a list, or one path), a folder (its images, sorted by
                name), or uint8 [N, H, W, 3] RGB pixels (resized to the model's size when
                they are another size).
            batch_size: images per runtime call.
            progress: a label to show a progress line on stderr (None: silent).
            check_files: first check that every file decodes (a DataError naming the bad
                ones); False when the caller has (``rank`` checks queries and gallery at once).

        Returns:
            A :class:`Prediction`; its ``attributes`` are decided by the model's rule among
            these images.
        """
        if isinstance(images, np.ndarray):
            outputs = self._run_array(images, batch_size)
            files = None
        else:
            files = self._files(images)
            _tensorflow_quietly()  # files are decoded with TensorFlow's ops, as in training
            if check_files:
                from tfmarket.data.check import require_readable

                require_readable(files)
            outputs = self.embedder.embed_files(files, batch_size, progress)
        return Prediction(outputs, files, self.schema, self.decide)

    def _files(self, images) -> list[str]:
        from tfmarket.data.filenames import list_images

        if isinstance(images, (str, Path)):
            if Path(images).is_dir():
                return [str(p) for p in list_images(images)]
            return [str(images)]
        if isinstance(images, Sequence):
            return [str(p) for p in images]
        raise TfmarketError(f"predict takes image paths, a folder or a uint8 array "
                            f"[N, H, W, 3], not {type(images).__name__}")

    def _run_array(self, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise TfmarketError(f"predict takes uint8 RGB images [N, H, W, 3], got "
                                f"{images.dtype} {list(images.shape)}")
        if images.shape[1:3] != (self.height, self.width):
            from tfmarket.preprocess import resize_image

            _tensorflow_quietly()

            images = np.stack([resize_image(image, self.height, self.width).numpy()
                               for image in images]) if len(images) else np.zeros(
                (0, self.height, self.width, 3), np.uint8)
        parts = [self.embedder.run(images[s:s + batch_size])
                 for s in range(0, len(images), batch_size)]
        if not parts:
            return {name: np.zeros((0,), np.float32) for name in self.embedder.output_names}
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def from_store(self, path: str | Path) -> Prediction:
        """The :class:`Prediction` an embedding store holds (``python -m tfmarket.gallery
        embed``: a ``.npz`` file, or a Parquet store folder or URI), read rather than
        computed; its attributes are decided by this model's rule from the stored
        probabilities. TfmarketError when the store is another model's (other attribute
        columns or embedding width) or was embedded with the other flip-test setting."""
        from tfmarket.serving.store import load_store, store_columns

        store = load_store(path)
        if store_columns(store) != tuple(self.schema.columns):
            raise TfmarketError(f"{path}: embedded by a model with other attribute columns "
                                f"than {self.path}")
        probe = self.embedder.run(np.zeros((1, self.height, self.width, 3), np.uint8))
        if store["embedding"].shape[1] != probe["embedding"].shape[1]:
            raise TfmarketError(f"{path}: {store['embedding'].shape[1]}-d embeddings, "
                                f"{self.path} makes {probe['embedding'].shape[1]}-d ones")
        if bool(store.get("flip_test", False)) != self.flip_test:
            raise TfmarketError(f"{path}: embedded with flip_test="
                                f"{bool(store.get('flip_test', False))}; load the model "
                                f"with the same setting")
        outputs = {"embedding": store["embedding"],
                   **{h: store[f"prob_{h}"] for h in self.schema.head_sizes}}
        return Prediction(outputs, [str(f) for f in store["files"]], self.schema, self.decide)

    # --- attributes ---

    def decide(self, prediction: Prediction, among: Prediction | None = None) -> np.ndarray:
        """int64 [N, C] attribute columns of ``prediction``'s images under the attribute rule
        (see :func:`decide_columns`; ``among``: more images to take neighbours from)."""
        return decide_columns(prediction.outputs, self.attribute_rule, self.schema,
                              among=None if among is None else among.outputs)

    # --- retrieval ---

    def rank(self, query: Prediction, gallery: Prediction, topk: int, *,
             search: str = "exact") -> Ranking:
        """Ranks the gallery for each query under the retrieval rule.

        Args:
            topk: results per query (at most the gallery's size).
            search: "exact" (chunked cosine top-k), or "faiss-<kind>" (an index over the
                gallery; only for rules that need no distance matrix).
        """
        from tfmarket.retrieval.retrieval_rule import distances, expand
        from tfmarket.retrieval.search import cosine_topk, topk_from_distances

        rule = self.retrieval_rule
        if rule.needs_distances:
            distmat = distances(query.outputs, gallery.outputs, rule, self.schema.head_sizes)
            indices, dist = topk_from_distances(distmat, topk)
            return Ranking(indices, dist, query.outputs, gallery.outputs, distmat)
        q_emb, g_emb = expand(query.embeddings, gallery.embeddings, rule.expansion_k,
                              rule.expansion_alpha)
        device = "cpu"
        if search == "exact":
            indices, dist = cosine_topk(q_emb, g_emb, topk)
        else:
            from tfmarket.retrieval.search import build_faiss_index, faiss_topk, on_available_gpus

            index = build_faiss_index(g_emb, kind=search.split("-", 1)[1])
            index, device = on_available_gpus(index)
            indices, dist = faiss_topk(index, q_emb, topk)
        # What was ranked (the expanded embeddings) is what evaluation scores.
        return Ranking(indices, dist, {"embedding": q_emb}, {"embedding": g_emb}, None, device)

    def search(self, query, gallery, topk: int = 10, where: str | None = None, *,
               batch_size: int = 64) -> SearchResult:
        """The ``topk`` gallery images nearest each query, under the retrieval rule.

        Args:
            query: a :class:`Prediction`, or images as :meth:`predict` takes them.
            gallery: a :class:`Prediction`, images as :meth:`predict` takes them (e.g. a
                folder of crops), or an embedding store of this model (``gallery embed``: a
                ``.npz`` file or a Parquet store folder, :meth:`from_store`).
            topk: results per query (fewer when fewer gallery images are candidates; none
                when ``where`` matches none).
            where: only gallery images whose decided attributes match, e.g.
                ``"upred, backpack, age=2"`` (a bare name means yes; the model's attribute
                columns, as ``python -m tfmarket.gallery search --where``; an unknown name is
                a TfmarketError listing the valid ones).

        The rule (expansion, re-ranking, attribute distance) is computed over the whole
        gallery, as ``rank`` does; ``where`` then keeps the matching images only.
        """
        from tfmarket.retrieval.search import cosine_topk, topk_from_distances
        from tfmarket.serving.store import filter_ids, parse_filter

        q = query if isinstance(query, Prediction) else self.predict(query,
                                                                      batch_size=batch_size)
        if isinstance(gallery, Prediction):
            g = gallery
        elif _is_store(gallery):
            g = self.from_store(gallery)
        else:
            g = self.predict(gallery, batch_size=batch_size)
        queries = q.files if q.files is not None else q.names
        files = g.files if g.files is not None else g.names
        allowed = None
        if where:
            allowed = filter_ids(g.columns, parse_filter(where, self.schema.columns))
        candidates = len(g) if allowed is None else len(allowed)
        k = min(topk, candidates)
        if k == 0:  # nothing matches (or an empty gallery): no hits, not an error
            return SearchResult(queries, files, np.zeros((len(q), 0), np.int64),
                                np.zeros((len(q), 0), np.float32))
        if allowed is None:
            ranking = self.rank(q, g, k)
            indices, dist = ranking.indices, ranking.distances
        elif self.retrieval_rule.needs_distances:
            from tfmarket.retrieval.retrieval_rule import distances

            distmat = distances(q.outputs, g.outputs, self.retrieval_rule,
                                self.schema.head_sizes)
            local, dist = topk_from_distances(np.ascontiguousarray(distmat[:, allowed]), k)
            indices = allowed[local]
        else:
            from tfmarket.retrieval.retrieval_rule import expand

            q_emb, g_emb = expand(q.embeddings, g.embeddings, self.retrieval_rule.expansion_k,
                                  self.retrieval_rule.expansion_alpha)
            local, dist = cosine_topk(q_emb, g_emb[allowed], k)
            indices = allowed[local]
        return SearchResult(queries, files, np.asarray(indices, np.int64),
                            np.asarray(dist, np.float32))


def load(path: str | Path, *, int8: bool = False, flip_test: bool = False, threads: int = 0,
         attribute_rule: str | Path | AttributeRule | None = None,
         retrieval: str | Path | RetrievalRule | None = None,
         runtime: str = "auto") -> ExportedModel:
    """An exported model, ready to predict and search (see the module docstring).

    Args:
        path: an export folder (``python -m tfmarket.export --onnx``: its ``model.onnx``, or
            ``model.int8.onnx`` with ``int8`` or when it is the only model there; the
            ``.tflite`` ones of ``--litert`` where there is no ONNX model) or an ``.onnx`` or
            ``.tflite`` file; ``model_card.json`` beside it gives the attribute schema.
        flip_test: average each image with its mirror image (twice the compute).
        threads: the runtime's threads (0 = its default: all).
        attribute_rule: None = ``attribute_rule.json`` beside the model if calibrate wrote one,
            else per image (sigmoid >= 0.5, argmax); "plain"; a rule file; an AttributeRule.
        retrieval: None = ``retrieval.json`` beside the model if calibrate wrote one, else
            cosine distance; "plain"; a rule file; a RetrievalRule.
        runtime: what runs the model, one of :data:`tfmarket.serving.embed.RUNTIMES`:
            "auto" (by the file's extension: onnxruntime for ``.onnx``), "onnxruntime", or
            "openvino" (the same ``.onnx`` file in OpenVINO; ``pip install
            'tfmarket[openvino]'``).

    Raises:
        TfmarketError: no model there, not a tfmarket export, a bad rule file, or a runtime
            that is unknown or not installed.
    """
    return ExportedModel(model_file(path, int8), flip_test=flip_test, threads=threads,
                         attribute_rule=attribute_rule, retrieval=retrieval, runtime=runtime)


def _is_store(gallery) -> bool:
    """A ``.npz`` file, or a Parquet store folder or URI (not a folder of images)."""
    from tfmarket.serving.parquet_store import is_parquet_store, is_uri

    return isinstance(gallery, (str, Path)) and (
        str(gallery).endswith(".npz") or is_uri(gallery) or is_parquet_store(gallery))


def _tensorflow_quietly() -> None:
    """Imports TensorFlow as the commands do (its start-up log lines dropped, malloc and oneDNN
    set first, :func:`tfmarket.console.quiet_tensorflow`); a no-op once it is imported."""
    from tfmarket.console import import_tensorflow_quietly

    import_tensorflow_quietly()
