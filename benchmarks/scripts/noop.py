"""P2/P7: main returns at once."""


def main():
    pass
