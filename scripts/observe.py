"""A simulated observation for demonstrations: a few scans, each announced, with a pause
between them. Stop it at any time; it ends cleanly on SIGTERM.

Run as an SBD activity, main receives ``sb_json`` (the SBD file) and ``sbi_id``.
"""

import json
import logging
import time

from pubsub import pub

LOG = logging.getLogger(__name__)
_subarray = None


def init(subarray_id: int = 1, *args, **kwargs):
    global _subarray
    _subarray = subarray_id


def main(*args, scans: int = 3, scan_seconds: float = 1.0, sb_json=None, sbi_id=None, **kwargs):
    targets = ["calibrator"]
    if sb_json:
        with open(sb_json) as stream:
            sbd = json.load(stream)
        targets = [t.get("target_id", "?") for t in sbd.get("targets", [])] or targets
        LOG.info("observing %s (SBI %s)", sbd.get("sbd_id"), sbi_id)
    for scan in range(1, scans + 1):
        target = targets[(scan - 1) % len(targets)]
        pub.sendMessage(
            "user.script.announce",
            msg_src=__name__,
            msg=f"subarray {_subarray}: scan {scan}/{scans} on {target}",
        )
        time.sleep(scan_seconds)
    pub.sendMessage("user.script.announce", msg_src=__name__, msg="observation complete")
