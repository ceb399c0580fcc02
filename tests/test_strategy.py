"""The tf.distribute strategy ``tfmarket.train`` picks on a machine without GPUs."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


def test_one_cpu_trains_under_the_default_strategy_on_the_plain_dataset():
    # OneDeviceStrategy("/cpu:0") wrapped the input in a MultiDeviceIterator whose teardown
    # held up the end of fit by up to a minute; the default strategy hands fit the dataset.
    from tfmarket.training.distribute import choose_strategy

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU machine uses OneDeviceStrategy on its GPU")
    strategy = choose_strategy(0)
    assert strategy is tf.distribute.get_strategy()
    assert not tf.distribute.has_strategy()  # nothing entered: the default one
    seen = []

    def dataset_fn(context):
        seen.append((context.num_input_pipelines, context.input_pipeline_id))
        return tf.data.Dataset.range(6).batch(2)

    inputs = strategy.distribute_datasets_from_function(dataset_fn)
    assert isinstance(inputs, tf.data.Dataset)
    assert seen == [(1, 0)]
    assert [b.numpy().tolist() for b in inputs] == [[0, 1], [2, 3], [4, 5]]
    assert strategy.num_replicas_in_sync == 1
    mean = strategy.reduce("MEAN", tf.constant(np.float32(3.0)), axis=None)
    assert float(mean) == 3.0
