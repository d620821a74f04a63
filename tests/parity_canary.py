"""pytest plugin for the issue-15 stress loop (not part of the default suite): after every test, rebuild the
1L-3H-48 pair of test_parity's failing case, run its forward, and log when either model's logits are not
bit-identical to the logits a new process computes for the same weights and inputs (taken once per run).

One suite run then samples the comparison after each of its ~450 tests instead of once, and a deviation is logged
with the test that ran just before it, the process-wide numeric settings that differ from the session's start,
each side's distance from float64, and `parity_failure_report` (where the models part, module by module; the
machine, threads and extra libraries). The torch, Python and NumPy random states are saved and restored around it,
so the tests see the numbers they would see without it.

    PYTHONPATH=tests python -m pytest -p parity_canary tests          (log: $PARITY_CANARY_LOG or /tmp/parity_canary.log)
    STRESS_CANARY=1 tests/stress_parity.sh 20
"""

from __future__ import annotations

import os
import random
import time

import pytest
import torch

LOG = os.environ.get("PARITY_CANARY_LOG", "/tmp/parity_canary.log")
_first: dict[str, object] = {}


def _log(line: str) -> None:
    with open(LOG, "a", encoding="utf-8") as file:
        file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} {line}\n")


def _canary() -> tuple[tuple[str, tuple[int, ...]], str]:
    """(the gap between the models and where, "") when both models' logits are bit-identical to the ones a new
    process computed at the first check of the run (`fresh_process`); otherwise the detail for the log: which side
    changed, then `parity_failure_report`."""
    from fresh_process import fresh_process_outputs
    from helpers import float64_logits, parity_failure_report, parity_pair, unpadded_case

    gpt2, ours = parity_pair("1L-3H-48")
    input_ids, labels = unpadded_case(gpt2.config.vocab_size)  # test_logits_and_loss_unpadded's inputs, exactly
    with torch.no_grad():
        expected, actual = gpt2(input_ids, labels=labels).logits, ours(input_ids, labels=labels).logits
    gap = (actual - expected).abs()
    where = tuple(int(i) for i in torch.nonzero(gap == gap.max())[0])
    key = (f"{gap.max().item():.4g}", where)
    fresh = _first.get("fresh")
    if fresh is None:
        fresh = _first["fresh"] = fresh_process_outputs(gpt2, input_ids, labels=labels)
        if "error" in fresh:
            raise RuntimeError(f"no baseline from a new process: {fresh['error']}")
    changed = []
    for name, here, side in (("GPT2LMHeadModel", expected, "gpt2"), ("ScratchGPT", actual, "ours")):
        if not torch.equal(here, fresh[side]):
            apart = (here - fresh[side]).abs()
            where_apart = tuple(int(i) for i in torch.nonzero(apart == apart.max())[0])
            changed.append(f"{name} (max |here - new| {apart.max():.4g} at {where_apart})")
    _first.setdefault("key", key)
    if not changed:
        return key, ""
    reference = float64_logits(gpt2, input_ids)
    return key, (
        f"not bit-identical to a new process: {', '.join(changed)}; "
        f"|ScratchGPT - float64| {(actual.double() - reference).abs().max():.4g}, "
        f"|GPT2LMHeadModel - float64| {(expected.double() - reference).abs().max():.4g}\n"
        + parity_failure_report(gpt2, ours, input_ids, labels=labels)
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    from numeric_state import differences, numeric_state

    _first.setdefault("state", numeric_state())
    yield
    saved = torch.get_rng_state(), random.getstate(), torch.is_grad_enabled()
    try:
        import numpy

        numpy_state = numpy.random.get_state()
    except ImportError:
        numpy, numpy_state = None, None
    try:
        key, detail = _canary()
        if detail:
            changed = differences(_first["state"], numeric_state())
            _log(
                f"DEVIATION after {item.nodeid}: gap {key[0]} at {key[1]} (first: {_first['key'][0]} at "
                f"{_first['key'][1]}); settings changed: {changed or 'none'}; {detail}"
            )
    except Exception as error:  # noqa: BLE001 - the canary must not hide the test's own result
        _log(f"ERROR after {item.nodeid}: {error!r}")
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        torch.set_grad_enabled(saved[2])
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def pytest_sessionfinish(session, exitstatus):
    if "key" in _first:
        _log(f"session end: {session.testscollected} tests, first gap {_first['key'][0]} at {_first['key'][1]}")
