"""tfmarket: pedestrian attribute recognition and person re-identification with Keras 3.

Importing the package is cheap: TensorFlow is imported only by the modules that need it.

The Python API (``tfmarket.serving.predictor``; imports no TensorFlow):

    model = tfmarket.load("exports/demo")        # an export folder or its model.onnx
    out = model.predict(["q1.jpg", "q2.jpg"])    # or a uint8 array [N, H, W, 3], or a folder
    out.embeddings, out.attributes               # float32 [N, D]; a DataFrame of attributes
    hits = model.search(out, gallery="crops/", topk=10, where="upred, backpack")
"""

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def __getattr__(name: str):
    # ``tfmarket.load`` is looked up lazily, so ``import tfmarket`` stays cheap (no onnxruntime,
    # no NumPy) for the commands' --help.
    if name == "load":
        from tfmarket.serving.predictor import load

        return load
    raise AttributeError(f"module 'tfmarket' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "load"])
