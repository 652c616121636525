import time

from ska_oso_oet.script import checkpoint


def main():
    while True:
        checkpoint()
        time.sleep(0.01)
