"""``python -m tfmarket.train`` with a callback that marks the end of training and says how long
``model.fit`` then took to return (issue 25's lead). Same arguments as the command.

    .venv/bin/python benchmarks/probes/fit_end.py --config configs/demo.yaml --workdir runs/x
"""

import sys
import time

import keras

import tfmarket.training.fit as fit_module
import tfmarket.training.run as run_module

START = time.time()


class MarkEnd(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        print(f"[probe] epoch {epoch} end t={time.time() - START:.1f}", file=sys.stderr,
              flush=True)

    def on_train_end(self, logs=None):
        self.at = time.time()
        print(f"[probe] on_train_end t={self.at - START:.1f}", file=sys.stderr, flush=True)


def fit_with_mark(model, inputs, callbacks, *args, **kwargs):
    mark = MarkEnd()
    result = fit_module.fit_model(model, inputs, callbacks + [mark], *args, **kwargs)
    print(f"[probe] fit returned {time.time() - mark.at:.1f}s after on_train_end",
          file=sys.stderr, flush=True)
    return result


run_module.fit_model = fit_with_mark

if __name__ == "__main__":
    from tfmarket.train import main

    sys.exit(main(sys.argv[1:]))
