"""Reproducible .npz archives."""

import numpy as np
import pytest

from tfmarket.serving.npzfile import save_npz


@pytest.mark.parametrize("compressed", [False, True])
def test_round_trips_like_numpy_and_is_byte_identical(tmp_path, compressed, monkeypatch):
    import time

    arrays = {"embedding": np.arange(12, dtype=np.float32).reshape(3, 4),
              "files": np.array(["a.jpg", "bb.jpg", "c.jpg"]), "model": np.array("m.onnx"),
              "empty": np.zeros((0, 2), np.int8)}
    save_npz(tmp_path / "a.npz", compressed=compressed, **arrays)
    # a later wall-clock time must not change a byte
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    save_npz(tmp_path / "b.npz", compressed=compressed, **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as loaded:
        assert list(loaded.keys()) == list(arrays)
        for name, value in arrays.items():
            assert loaded[name].dtype == value.dtype
            np.testing.assert_array_equal(loaded[name], value)


def test_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError):
        save_npz(tmp_path / "x.npz", bad=np.array([{"a": 1}], dtype=object))
