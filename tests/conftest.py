import os

import numpy as np
import pytest
import torch

# The suite runs on small shared CPUs: one intra-op thread avoids oversubscription (the tiny
# models used here gain nothing from more).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    from src_models.models.loading import load_model

    return load_model("tiny-test", "cpu")


@pytest.fixture
def two_class_mask():
    """64x64 labels: class 1 on the left, 2 on the right, 3 in a bottom band."""
    m = np.zeros((64, 64), np.uint8)
    m[:, :32] = 1
    m[:, 32:] = 2
    m[48:, :] = 3
    return m


# CI (.ci/run sets DIFFINFINITE_REQUIRE_CONFORMANCE=1) fails when any conformance test is skipped:
# the reference vectors ship in tests/data, so a skip means something is broken, not missing.
_SKIPPED_CONFORMANCE: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "conformance" in report.keywords:
        _SKIPPED_CONFORMANCE.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_CONFORMANCE and os.environ.get("DIFFINFINITE_REQUIRE_CONFORMANCE") == "1":
        print(f"\nCI: {len(_SKIPPED_CONFORMANCE)} conformance test(s) skipped: " + ", ".join(_SKIPPED_CONFORMANCE))
        session.exitstatus = 1
