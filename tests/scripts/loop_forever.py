"""Loops until stopped, announcing that it has started. Accepts the keyword arguments an
activity's main receives (sb_json, sbi_id)."""

import time

from pubsub import pub


def main(**kwargs):
    pub.sendMessage("user.script.announce", msg_src="loop_forever", msg="looping")
    while True:
        time.sleep(0.01)
