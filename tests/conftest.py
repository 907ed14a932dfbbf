import os
import re

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# In CI (CI=true) a check that would skip because a tool it needs is missing fails instead: the browser tests
# (chromium, playwright, gradio), the GLB validator and three.js (node, npm packages), the tests that serve
# (network namespaces). A green CI then means these checks ran. Skips for other reasons (no CUDA, no GPU
# wheels) stay skips.
REQUIRED_IN_CI = re.compile(r"\b(chromium|playwright|gradio|node|gltf-validator|three(\.js)?|network namespace|"
                            r"unshare)\b", re.IGNORECASE)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _required_skip(report) -> bool:
    if not (_in_ci() and report.skipped and isinstance(report.longrepr, tuple)):
        return False
    return REQUIRED_IN_CI.search(str(report.longrepr[2])) is not None


def _fail(report) -> None:
    report.outcome = "failed"
    path, line, reason = report.longrepr
    report.longrepr = f"{path}:{line}: CI=true and this check needs a tool that is missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001
    outcome = yield
    report = outcome.get_result()
    if _required_skip(report):
        _fail(report)


def pytest_collectreport(report):
    if _required_skip(report):
        _fail(report)
