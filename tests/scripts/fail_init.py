"""init raises while preparing."""


def init(*args, **kwargs):
    raise RuntimeError("intentional failure in init")


def main():
    pass
