"""The micro-batcher on a real ONNX Runtime session: shared runs, right rows back to each caller."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from distill_engine.metrics import softmax
from distill_watchdog import metrics
from distill_watchdog.card import parse_card
from distill_watchdog.runtime import available_cpus, load_model, session_options
from distill_watchdog.serving.batcher import MicroBatcher, ModelUnavailableError

from support import card_for, mlp_onnx_bytes, mlp_reference, mlp_weights


def _batch_stats() -> tuple[float, float]:
    count = total = 0.0
    for metric in metrics.batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return count, total


@pytest.fixture
def model():
    return load_model(mlp_onnx_bytes(), parse_card(card_for()), "v1", threads=1)


def test_concurrent_requests_share_runs_and_get_their_own_rows(model):
    async def main() -> None:
        batcher = MicroBatcher(lambda: model, max_batch_size=32, max_batch_delay_ms=2)
        batcher.start()
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(int(rng.integers(1, 4)), 40)).astype(np.float32) for _ in range(100)]
        runs_before, rows_before = _batch_stats()
        results = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        runs, rows = _batch_stats()
        await batcher.stop()
        for x, (probs, predictions, version) in zip(inputs, results, strict=True):
            assert version == "v1"
            np.testing.assert_allclose(probs, softmax(mlp_reference(x, mlp_weights(40, 10))), atol=1e-5)
            assert predictions == probs.argmax(axis=1).tolist()  # each request's own rows of the batch
        assert rows - rows_before == sum(len(x) for x in inputs)
        assert runs - runs_before < len(inputs) / 4  # shared runs
        assert (rows - rows_before) / (runs - runs_before) <= 32 + 3

    asyncio.run(main())


def test_oversized_single_request_runs_alone(model):
    async def main() -> None:
        batcher = MicroBatcher(lambda: model, max_batch_size=4, max_batch_delay_ms=0)
        batcher.start()
        x = np.zeros((10, 40), dtype=np.float32)
        probs, _, _ = await batcher.submit(x)
        await batcher.stop()
        assert probs.shape == (10, 10)

    asyncio.run(main())


def test_no_model_is_an_explicit_error():
    async def main() -> None:
        batcher = MicroBatcher(lambda: None, max_batch_size=4, max_batch_delay_ms=0)
        batcher.start()
        with pytest.raises(ModelUnavailableError):
            await batcher.submit(np.zeros((1, 40), dtype=np.float32))
        await batcher.stop()

    asyncio.run(main())


def test_stop_finishes_queued_work(model):
    async def main() -> None:
        batcher = MicroBatcher(lambda: model, max_batch_size=2, max_batch_delay_ms=0)
        batcher.start()
        pending = [batcher.submit(np.zeros((1, 40), dtype=np.float32)) for _ in range(9)]
        await asyncio.sleep(0)
        await batcher.stop()
        assert all(p.done() and p.result()[0].shape == (1, 10) for p in pending)

    asyncio.run(main())


def test_threads_default_to_the_cpus_this_process_may_use():
    import os

    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
    assert session_options(None).intra_op_num_threads == available_cpus()
    assert session_options(3).intra_op_num_threads == 3


def test_probability_output_with_temperature():
    card = parse_card(card_for(output_kind="probabilities", temperature=2.0, output_name="probs"))
    loaded = load_model(mlp_onnx_bytes(softmax=True, output_name="probs"), card, "p", threads=1)
    x = np.random.default_rng(2).normal(size=(3, 40)).astype(np.float32)
    expected = softmax(mlp_reference(x, mlp_weights(40, 10)) / 2.0)  # log-softmax / T renormalises to this
    np.testing.assert_allclose(loaded.predict_proba(x), expected, atol=1e-5)


def test_logits_with_temperature_and_a_float64_output_get_the_calibration_head():
    from onnx import TensorProto, helper

    from distill_watchdog.runtime import CALIBRATED_OUTPUT, calibration_head

    card = parse_card(card_for(temperature=1.7))
    x = np.random.default_rng(3).normal(size=(5, 40)).astype(np.float32)
    loaded = load_model(mlp_onnx_bytes(), card, "t", threads=1)
    np.testing.assert_allclose(
        loaded.predict_proba(x), softmax(mlp_reference(x, mlp_weights(40, 10)) / 1.7), atol=1e-5
    )
    # A float64 output is cast first; the result is float32 probabilities either way.
    import onnx

    proto = onnx.load_from_string(mlp_onnx_bytes(output_name="raw"))
    proto.graph.node.append(helper.make_node("Cast", ["raw"], ["logits"], to=TensorProto.DOUBLE))
    proto.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["batch", 10]))
    loaded = load_model(proto.SerializeToString(), parse_card(card_for()), "d", threads=1)
    probs = loaded.predict_proba(x)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, softmax(mlp_reference(x, mlp_weights(40, 10))), atol=1e-5)
    head = onnx.load_from_string(calibration_head(mlp_onnx_bytes(), parse_card(card_for())))
    assert CALIBRATED_OUTPUT in {o.name for o in head.graph.output}


def test_thread_count_is_explicit_or_chosen_between_one_and_the_cpus():
    card = parse_card(card_for())
    assert load_model(mlp_onnx_bytes(), card, "a", threads=3).threads == 3
    assert load_model(mlp_onnx_bytes(), card, "b", threads=None).threads in {1, available_cpus()}


def test_a_lone_request_runs_in_place_and_a_burst_shares_one_run(model):
    async def main() -> None:
        batcher = MicroBatcher(lambda: model, max_batch_size=32, max_batch_delay_ms=0, inline_below_us=1e6)
        batcher.start()
        x = np.zeros((1, 40), dtype=np.float32)
        runs, rows = _batch_stats()
        await batcher.submit(x)  # nothing else in flight: runs at once, batch of one
        assert _batch_stats() == (runs + 1, rows + 1)
        await asyncio.sleep(0)  # a new loop iteration
        # Eight requests whose tasks start in the same iteration: the first runs alone, the
        # other seven queue behind it and share the next run.
        await asyncio.gather(*(batcher.submit(x) for _ in range(8)))
        assert _batch_stats() == (runs + 3, rows + 9)
        # Requests now arrive together: the first of the next burst queues too, one run for all.
        await asyncio.sleep(0)
        await asyncio.gather(*(batcher.submit(x) for _ in range(8)))
        assert _batch_stats() == (runs + 4, rows + 17)
        # Traffic falls back to one request at a time: the first queues (the last run served
        # eight), and once a run served one, lone requests run in place again.
        await asyncio.sleep(0)
        queued = batcher.submit(x)
        assert not queued.done()
        await queued
        for _ in range(2):
            await asyncio.sleep(0)
            assert batcher.submit(x).done()
        assert _batch_stats() == (runs + 7, rows + 20)
        await batcher.stop()

    asyncio.run(main())


def test_a_non_finite_output_fails_only_the_requests_it_belongs_to(model):
    from distill_watchdog.serving.batcher import NonFiniteOutputError

    async def main() -> None:
        batcher = MicroBatcher(lambda: model, max_batch_size=32, max_batch_delay_ms=0)
        batcher.start()
        good = np.zeros((2, 40), dtype=np.float32)
        bad = np.zeros((3, 40), dtype=np.float32)
        bad[1] = 3e38  # finite input, overflows inside the model
        results = await asyncio.gather(
            batcher.submit(good), batcher.submit(bad), batcher.submit(good), return_exceptions=True
        )
        await batcher.stop()
        assert results[0][0].shape == (2, 10) and results[2][0].shape == (2, 10)
        assert isinstance(results[1], NonFiniteOutputError) and results[1].rows == [1]

    asyncio.run(main())


def test_values_float32_cannot_carry_fail_only_their_own_request(model):
    """Requests arrive as parsed (float64 or integer); the batch is checked and cast once."""
    from distill_watchdog.serving.batcher import NonFiniteInputError

    async def main() -> None:
        batcher = MicroBatcher(lambda: model, max_batch_size=32, max_batch_delay_ms=0)
        batcher.start()
        good = np.random.default_rng(4).normal(size=(2, 40))  # float64
        ints = np.arange(40).reshape(1, 40)  # integers: always in range
        large = np.zeros((1, 40))
        large[0, 3] = 3e38  # float64 inside float32's range: kept
        overflow = np.zeros((2, 40))
        overflow[1, 5] = 1e39  # finite float64, infinite as float32
        nan = np.zeros((1, 40), dtype=np.float32)
        nan[0, 0] = np.nan
        results = await asyncio.gather(
            *(batcher.submit(x) for x in (good, overflow, ints, nan, large)), return_exceptions=True
        )
        await batcher.stop()
        assert isinstance(results[1], NonFiniteInputError) and isinstance(results[3], NonFiniteInputError)
        for i, x in ((0, good), (2, ints)):
            probs, labels, _ = results[i]
            assert probs.dtype == np.float32 and probs.shape == (len(x), 10)
            np.testing.assert_allclose(probs, model.predict_proba(x.astype(np.float32)), rtol=1e-5)
            assert labels == probs.argmax(axis=1).tolist()
        assert results[4][0].shape == (1, 10)

    asyncio.run(main())
