"""Interleaves prints, logging records, stderr and announcements."""

import logging
import sys

from pubsub import pub

LOG = logging.getLogger("log_and_print")


def main():
    print("first line")
    LOG.warning("a warning")
    pub.sendMessage("user.script.announce", msg_src="log_and_print", msg="announced")
    print("to stderr", file=sys.stderr)
    LOG.info("an info record")
    print("last line without newline", end="")
