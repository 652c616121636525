"""The OET benchmark harness: figures P1-P7 and the gateway, measured through real clients on a
real ``oet-stack``. Run with ``python -m benchmarks`` (see :mod:`benchmarks.run`)."""
