"""Not valid Python: loading fails."""


def main(:
    pass
