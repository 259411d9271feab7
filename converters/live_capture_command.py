"""`ferry capture --live`: the CLI end of converters.live_capture."""

from __future__ import annotations

import argparse

from converters.capture import CaptureError
from converters.errors import FerryError
from converters.events import EventStream
from converters.fsfreeze import FreezeError
from converters.live_capture import LiveRequest, live_capture
from converters.live_capture_limit import LimitError
from converters.wire.errors import WireError
from converters.write_tracker import TrackerError


def run_live(args: argparse.Namespace, events: EventStream) -> int:
    if args.writer_limit and not args.writer_cgroup:
        raise FerryError("--writer-limit needs --writer-cgroup")
    request = LiveRequest(
        server=args.server,
        disks=None if args.disks == "all" else args.disks.split(","),
        name=args.resume or args.name,
        compress=args.compress,
        bandwidth=args.bandwidth,
        include_loop=args.loop,
        writer_cgroup=args.writer_cgroup,
        writer_limit=args.writer_limit,
    )
    try:
        result = live_capture(request, events)
    except (
        CaptureError,
        WireError,
        TrackerError,
        FreezeError,
        LimitError,
        ValueError,
    ) as e:
        raise FerryError(str(e)) from None
    for r in result.rounds:
        print(
            f"round {r.number}: {r.bytes_sent} bytes sent in {r.seconds:.2f} s, "
            f"{r.bytes_dirtied} bytes written meanwhile ({r.decision})"
        )
    print(
        f"live capture {result.session} complete: {len(result.rounds)} rounds, "
        f"final round {result.final_bytes} bytes, frozen "
        f"{result.freeze_seconds:.3f} s, total {result.total_seconds:.1f} s"
    )
    return 0
