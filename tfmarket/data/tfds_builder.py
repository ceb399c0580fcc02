"""TensorFlow Datasets builders ``market1501`` (both Market-1501 layouts) and ``reid_crops``
(DukeMTMC-reID, MSMT17, CUHK03, your own crops), all from a manual download.

The builder does not download anything: point it at the extracted folder, and it reads it with
this project's own readers (:func:`tfmarket.data.registry.load_dataset`), so the TFDS splits
hold exactly the records (identities, cameras, attributes, junk/distractor handling) that the
rest of ``tfmarket`` sees. Two configs:

* ``market1501/original`` -- the original layout; splits ``train``, ``query``, ``gallery``.
* ``market1501/course`` -- the course layout; splits ``train``, ``query`` (``queries/``) and
  ``test`` (``test/``), the last two unlabelled (``id`` and ``camera`` are -1).

``reid_crops`` has one config per other dataset tfmarket reads (``dukemtmcreid``, ``msmt17``,
``cuhk03_labeled``, ``cuhk03_detected``, ``custom``; folder layouts in ``docs/datasets.md``), each
with splits ``train``, ``query``, ``gallery`` (a split the folder lacks is left out). Its
``attributes`` feature is the dataset's own attribute schema (DukeMTMC-reID: int64 [23]; the
schema is in the metadata as ``attribute_schema``); datasets without attributes have no
``attributes`` feature.

Each split keeps :func:`load_dataset`'s order (sorted file names, or the list files' order), so
example ``i`` of a split is record ``i`` of the matching
:class:`~tfmarket.data.records.Records`.

Usage::

    from tfmarket.data.tfds_builder import build

    builder = build("~/data/market1501-course", "~/tensorflow_datasets", config="course")
    train = builder.as_dataset(split="train")   # {"image", "file_name", "id", "camera", ...}

Importing this module registers the builder, so ``tfds.load("market1501/course", data_dir=...,
download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=...)})``
works too. Importing it imports TensorFlow and TensorFlow Datasets.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfmarket.attributes import COLUMNS, schema_for_layout
from tfmarket.data.records import Records
from tfmarket.data.registry import load_dataset
from tfmarket.errors import ConfigError, DataError

__all__ = ["CONFIGS", "REID_CONFIGS", "Market1501", "Market1501Config", "ReidCrops", "build"]

HOMEPAGE = "https://zheng-lab.cecs.anu.edu.au/Project/project_reid.html"
ATTRIBUTES_HOMEPAGE = "https://github.com/vana77/Market-1501_Attribute"

CITATION = r"""@inproceedings{zheng2015scalable,
  title     = {Scalable Person Re-identification: A Benchmark},
  author    = {Zheng, Liang and Shen, Liyue and Tian, Lu and Wang, Shengjin and Wang, Jingdong
               and Tian, Qi},
  booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages     = {1116--1124},
  year      = {2015}
}
@article{lin2019improving,
  title   = {Improving Person Re-identification by Attribute and Identity Learning},
  author  = {Lin, Yutian and Zheng, Liang and Zheng, Zhedong and Wu, Yu and Hu, Zhilan
             and Yan, Chenggang and Yang, Yi},
  journal = {Pattern Recognition},
  volume  = {95},
  pages   = {151--161},
  year    = {2019}
}
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Market-1501 cannot be downloaded automatically (research use only; the authors ask that it not
be redistributed). Download and extract it yourself, then pass the extracted folder as
`manual_dir` (`tfds.download.DownloadConfig(manual_dir=...)`, or
`tfmarket.data.tfds_builder.build(manual_dir, data_dir, config)`). Pick the config that matches
the folder's layout:

* config `original` -- Market-1501 as released by Zheng et al. (Market-1501-v15.09.15):

      MANUAL_DIR/bounding_box_train/   0002_c1s1_000451_03.jpg ...
      MANUAL_DIR/bounding_box_test/    (the gallery)
      MANUAL_DIR/query/
      MANUAL_DIR/market_attribute.mat  (optional; also found in MANUAL_DIR's parent folder)

  `market_attribute.mat` holds the attribute annotations of Lin et al.
  (https://github.com/vana77/Market-1501_Attribute). Without it all attributes are 0 (unknown).
  Junk images (identity -1) are dropped; distractors (identity 0000) are kept in the gallery and
  query splits and dropped from train.

* config `course` -- the course version:

      MANUAL_DIR/train/                  0002_c1_016620005.jpg ...
      MANUAL_DIR/annotations_train.csv   id,age,backpack,...,downbrown (one row per identity)
      MANUAL_DIR/test/                   000001.jpg ... (unlabelled)
      MANUAL_DIR/queries/                (unlabelled)
"""

ATTRIBUTE_ENCODING = (
    "file encoding of the annotation files: 1 = no, 2 = yes, except age 1-4 = young, "
    "teenager, adult, old; 0 = unknown (no annotation file, distractors, unlabelled splits)"
)

# Image files are stored as they are on disk when every decoder turns them into the same RGB
# image (JPEG/PNG, RGB or grayscale: grayscale is expanded to 3 channels when decoded); others
# (palette, alpha, CMYK, 16-bit) are converted to RGB and stored as lossless PNG.
_KEPT_FORMATS = ("JPEG", "PNG")
_KEPT_MODES = ("RGB", "L")


@dataclasses.dataclass(eq=False)
class Market1501Config(tfds.core.BuilderConfig):
    """A builder config: which folder layout to read and how to name its splits.

    Attributes:
        layout: the ``layout`` argument of :func:`load_dataset` (``"market1501"``/``"course"``).
        splits: (TFDS split name, :class:`ReidDataset` attribute) pairs.
    """

    layout: str = "course"
    splits: tuple[tuple[str, str], ...] = ()


CONFIGS = (
    Market1501Config(
        name="original",
        description=(
            "Original Market-1501 layout (bounding_box_train/, bounding_box_test/, query/, "
            "market_attribute.mat); splits train, query, gallery."
        ),
        layout="market1501",
        splits=(("train", "train"), ("query", "query"), ("gallery", "gallery")),
    ),
    Market1501Config(
        name="course",
        description=(
            "Course layout (train/ + annotations_train.csv, unlabelled test/ and queries/); "
            "splits train, query (queries/), test (test/)."
        ),
        layout="course",
        splits=(("train", "train"), ("query", "query"), ("test", "gallery")),
    ),
)


class Market1501(tfds.core.GeneratorBasedBuilder):
    """Market-1501 person re-identification crops with identity, camera and 27 attributes."""

    name = "market1501"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: configs original and course."}
    BUILDER_CONFIGS = list(CONFIGS)
    DEFAULT_CONFIG_NAME = "course"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. Overridden because tensorflow-datasets 4.9.10's own lookup imports
        ``importlib_resources``, which it does not declare as a dependency on Python >= 3.9
        (tensorflow/datasets#11212)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo is built directly (not with dataset_info_from_configs) so that no README.md
        # or CITATIONS.bib that might appear beside this module overrides the text below.
        names = ", ".join(f"{i}={c}" for i, c in enumerate(COLUMNS))
        description = (
            "Market-1501 (Zheng et al., ICCV 2015): pedestrian crops from six cameras for person "
            "re-identification, with the 27 identity-level attributes of Lin et al. (2019), "
            f"{ATTRIBUTES_HOMEPAGE}.\n\n"
            f"Config: {self.builder_config.description}\n\n"
            "Features: `image` (RGB crop; the original file bytes), `file_name`, `id` (identity; "
            "0 = distractor, -1 = unlabelled), `camera` (1-6, -1 = unknown), `attributes` "
            f"(int64 [27]; {ATTRIBUTE_ENCODING}). Attribute order (also in the metadata as "
            f"`attribute_names`): {names}.\n\n"
            "Examples keep tfmarket's reader order (sorted file names)."
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(None, None, 3),
                        encoding_format="jpeg",
                        doc="RGB crop (the file's own bytes; grayscale decodes to 3 channels).",
                    ),
                    "file_name": tfds.features.Text(doc="Image file name, without folder."),
                    "id": tfds.features.Scalar(
                        np.int64, doc="Identity (0 = distractor, -1 = unlabelled split)."
                    ),
                    "camera": tfds.features.Scalar(
                        np.int64, doc="Camera number 1-6 (-1 = unknown)."
                    ),
                    "attributes": tfds.features.Tensor(
                        shape=(len(COLUMNS),),
                        dtype=np.int64,
                        doc=f"Attributes in metadata['attribute_names'] order; "
                        f"{ATTRIBUTE_ENCODING}.",
                    ),
                }
            ),
            supervised_keys=("image", "id"),
            disable_shuffling=True,
            homepage=HOMEPAGE,
            citation=CITATION,
            metadata=tfds.core.MetadataDict(
                attribute_names=list(COLUMNS),
                attribute_encoding=ATTRIBUTE_ENCODING,
                layout=self.builder_config.layout,
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Reads the manual folder with :func:`load_dataset`; one generator per split.

        A split the folder does not have (the course layout's optional ``queries/``) is left out,
        as TFDS cannot write an empty split.
        """
        data = load_dataset(Path(dl_manager.manual_dir), layout=self.builder_config.layout)
        return {
            split: self._generate_examples(getattr(data, attribute))
            for split, attribute in self.builder_config.splits
            if len(getattr(data, attribute))
        }

    def _generate_examples(self, records: Records):
        """Yields (index, example); integer keys keep the readers' order."""
        with_attributes = records.attributes.shape[1] > 0
        for i, path in enumerate(records.paths):
            path = Path(path)
            example = {
                "image": _image_bytes(path),
                "file_name": path.name,
                "id": int(records.pids[i]),
                "camera": int(records.cams[i]),
            }
            if with_attributes:
                example["attributes"] = records.attributes[i].astype(np.int64)
            yield i, example


_REID_SPLITS = (("train", "train"), ("query", "query"), ("gallery", "gallery"))
REID_CONFIGS = (
    Market1501Config(
        name="dukemtmcreid",
        description="DukeMTMC-reID (bounding_box_train/, bounding_box_test/, query/, optional "
                    "duke_attribute.mat): splits train, query, gallery; its 23 attributes.",
        layout="dukemtmcreid", splits=_REID_SPLITS),
    Market1501Config(
        name="msmt17",
        description="MSMT17 V1 or V2 (list_*.txt + image folders; train = list_train + "
                    "list_val): splits train, query, gallery; no attributes.",
        layout="msmt17", splits=_REID_SPLITS),
    Market1501Config(
        name="cuhk03_labeled",
        description="CUHK03, new 767/700 protocol, labeled boxes: splits train, query, "
                    "gallery; no attributes.",
        layout="cuhk03-labeled", splits=_REID_SPLITS),
    Market1501Config(
        name="cuhk03_detected",
        description="CUHK03, new 767/700 protocol, detected boxes: splits train, query, "
                    "gallery; no attributes.",
        layout="cuhk03-detected", splits=_REID_SPLITS),
    Market1501Config(
        name="custom",
        description="Your own crops (train.csv / train.txt / train/<pid>/, the same for query "
                    "and gallery): splits train and, when given, query and gallery.",
        layout="custom", splits=_REID_SPLITS),
)

REID_INSTRUCTIONS = """\
These datasets cannot be downloaded automatically. Download and extract one yourself, then pass
its folder as `manual_dir`, with the config naming the dataset: `dukemtmcreid` (the folder
DukeMTMC-reID.zip extracts to, optionally with duke_attribute.mat), `msmt17` (MSMT17_V1/ or
MSMT17_V2/, the folder holding list_train.txt), `cuhk03_labeled` / `cuhk03_detected` (the
folder holding cuhk03_new_protocol_config_*.mat and images_labeled/ or images_detected/; see
`python -m tfmarket.data extract-cuhk03`), `custom` (train.csv / train.txt / train/<pid>/).
tfmarket's docs/datasets.md gives every layout.
"""


class ReidCrops(Market1501):
    """Person re-identification crops of the other datasets tfmarket reads (not Market-1501),
    each with identity, camera and, where the dataset has them, its own attributes."""

    name = "reid_crops"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: DukeMTMC-reID, MSMT17, CUHK03, custom."}
    BUILDER_CONFIGS = list(REID_CONFIGS)
    DEFAULT_CONFIG_NAME = "dukemtmcreid"
    MANUAL_DOWNLOAD_INSTRUCTIONS = REID_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        layout = self.builder_config.layout
        schema = schema_for_layout(layout)
        features = {
            "image": tfds.features.Image(
                shape=(None, None, 3), encoding_format="jpeg",
                doc="RGB crop (the file's own bytes; grayscale decodes to 3 channels)."),
            "file_name": tfds.features.Text(doc="Image file name, without folder."),
            "id": tfds.features.Scalar(
                np.int64, doc="Identity (0 = distractor, -1 = unlabelled split)."),
            "camera": tfds.features.Scalar(np.int64, doc="Camera number (-1 = unknown)."),
        }
        if schema.columns:
            features["attributes"] = tfds.features.Tensor(
                shape=(len(schema.columns),), dtype=np.int64,
                doc=f"Attributes in metadata['attribute_names'] order; {schema.encoding}; "
                    "0 = unknown.")
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Person re-identification crops read by tfmarket's readers (docs/datasets.md)."
                f"\n\nConfig: {self.builder_config.description}\n\n"
                "Examples keep tfmarket's reader order."),
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "id"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                attribute_names=list(schema.columns),
                attribute_schema=schema.to_dict(),
                layout=layout,
            ),
        )


def _image_bytes(path: Path) -> bytes:
    """The file's bytes (re-encoded as RGB PNG where decoders could disagree); DataError if bad."""
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format in _KEPT_FORMATS and image.mode in _KEPT_MODES:
                return data
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def build(
    manual_dir: str | Path,
    data_dir: str | Path,
    config: str = "course",
    overwrite: bool = False,
) -> Market1501:
    """Prepares ``market1501/<config>`` (or ``reid_crops/<config>``) from an extracted folder
    and returns the builder.

    Args:
        manual_dir: the extracted dataset folder (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``).
        data_dir: where TFDS writes the prepared dataset (``data_dir/market1501/<config>/1.0.0``;
            ``data_dir/downloads`` is created, empty, as TFDS always does).
        config: ``"course"`` or ``"original"`` (``market1501``); ``"dukemtmcreid"``,
            ``"msmt17"``, ``"cuhk03_labeled"``, ``"cuhk03_detected"`` or ``"custom"``
            (``reid_crops``).
        overwrite: rebuild even if ``data_dir`` already holds this config and version (otherwise
            the existing files are reused and ``manual_dir`` is not read again).

    Returns:
        The prepared builder; read it with ``builder.as_dataset(split=...)``.

    Raises:
        ConfigError: unknown config.
        DataError: ``manual_dir`` is missing or not a dataset in the config's layout.
    """
    classes = {**{c.name: Market1501 for c in CONFIGS}, **{c.name: ReidCrops for c in REID_CONFIGS}}
    if config not in classes:
        raise ConfigError(f"unknown config {config!r}; valid configs: {list(classes)}")
    cls = classes[config]
    manual = Path(manual_dir).expanduser().resolve()
    if not manual.is_dir():
        raise DataError(f"{manual}: dataset folder not found (manual_dir of {cls.name}/{config})")
    builder = cls(data_dir=str(Path(data_dir).expanduser()), config=config)
    mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), download_mode=mode)
    )
    return builder
