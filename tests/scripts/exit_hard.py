"""Leaves the interpreter without any Python cleanup."""

import os


def main():
    os._exit(3)
