"""main raises: the procedure must end FAILED with this stack trace."""


def main():
    raise ValueError("intentional failure in main")
