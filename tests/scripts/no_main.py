"""Defines no main(): preparing it must fail clearly."""


def init():
    pass
