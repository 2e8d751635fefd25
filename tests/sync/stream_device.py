"""A stand-in ``feederd`` for stream tests: ``spool export`` writes a prepared tar file to
stdout (whatever it holds: corrupt, truncated, hostile), ``spool ack`` records the ack.

Usage (as a device's ``feederd`` command): ``python stream_device.py STREAM ACKLOG ...``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    stream, acklog, *args = argv
    if args[:2] == ["spool", "export"]:
        sys.stdout.buffer.write(Path(stream).read_bytes())
        return 0
    if args[:2] == ["spool", "ack"]:
        with Path(acklog).open("a") as log:
            log.write(args[2] + "\n")
        print(json.dumps({"acked": 1, "seq": int(args[2])}))
        return 0
    sys.stderr.write(f"feederd: unsupported {args}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
