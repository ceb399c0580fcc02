"""Synthetic datasets: drawn pedestrians with known identities and attributes, seen by the
cameras of a domain, written in a dataset's own layout (tests, CI and laptops need no download).

* ``people``: each identity's fixed appearance (its attributes plus identity-only cues).
* ``domains``, ``scenes``: the camera networks and each camera's scene, light, blur and noise.
* ``drawing``: one image of a person (or a distractor / junk image) through a camera.
* ``writer``: :func:`write_synthetic`, a dataset in the course or Market-1501 layout.
* ``formats``: the other datasets' layouts (DukeMTMC-reID, MSMT17, CUHK03, custom crops).

May import: ``tfmarket.attributes``, ``tfmarket.errors`` and ``tfmarket.data``'s readers (for
their file formats); NumPy, SciPy and Pillow. No TensorFlow.
"""

from tfmarket.data.synthetic.domains import DEFAULT_DOMAIN, DOMAINS, Domain
from tfmarket.data.synthetic.drawing import draw_person, render_person
from tfmarket.data.synthetic.people import attribute_row, identity_appearance
from tfmarket.data.synthetic.scenes import make_camera, neutral_camera
from tfmarket.data.synthetic.writer import LAYOUTS, SUMMARY_FILE, TRUTH_FILE, write_synthetic

__all__ = ["DEFAULT_DOMAIN", "DOMAINS", "LAYOUTS", "SUMMARY_FILE", "TRUTH_FILE", "Domain",
           "attribute_row", "draw_person", "identity_appearance", "make_camera",
           "neutral_camera", "render_person", "write_synthetic"]
