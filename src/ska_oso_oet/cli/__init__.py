"""The ``oet`` command: a client of the REST gateway (``cli/http.py`` is its only HTTP user)."""
