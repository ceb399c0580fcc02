"""The tf.distribute strategy ``tfmarket.train`` picks on a machine without GPUs, and how its
input reaches ``fit``."""

import pytest

tf = pytest.importorskip("tensorflow")


def test_one_cpu_feeds_fit_with_a_plain_iterator_not_a_multi_device_one():
    # OneDeviceStrategy("/cpu:0") fed fit through a MultiDeviceIterator whose teardown held up
    # the end of fit by up to a minute (benchmarks/README.md); the one-CPU strategy must not.
    from tensorflow.python.data.ops import iterator_ops, multi_device_iterator_ops

    from tfmarket.training.distribute import choose_strategy, distribute_inputs, is_one_cpu

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU machine uses OneDeviceStrategy on its GPU")
    strategy = choose_strategy(0)
    assert is_one_cpu(strategy) and strategy.num_replicas_in_sync == 1
    seen = []

    def dataset_fn(context):
        seen.append((context.num_input_pipelines, context.input_pipeline_id))
        return tf.data.Dataset.range(6).batch(2)

    inputs = distribute_inputs(strategy, dataset_fn)
    assert seen == [(1, 0)]
    iterator = iter(inputs)
    underlying = [worker._iterator for worker in iterator._iterators]
    assert len(underlying) == 1
    assert isinstance(underlying[0], iterator_ops.OwnedIterator)
    assert not isinstance(underlying[0], multi_device_iterator_ops.OwnedMultiDeviceIterator)
    assert [strategy.experimental_local_results(next(iterator))[0].numpy().tolist()
            for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]

    # What OneDeviceStrategy does, so that the check above can fail.
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert not is_one_cpu(one_device)
    old = iter(distribute_inputs(one_device, dataset_fn))
    assert isinstance(old._iterators[0]._iterator,
                      multi_device_iterator_ops.OwnedMultiDeviceIterator)

