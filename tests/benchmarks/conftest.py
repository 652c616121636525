"""Registers the ``bench_smoke`` marker (select: ``pytest -m bench_smoke``; skip: ``-m "not bench_smoke"``)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "bench_smoke: runs the benchmark harness in --smoke mode (about 30 s, real stack)",
    )
