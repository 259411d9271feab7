"""`ferry deploy --image SOURCE --target DISK[,DISK2] --confirm NAME_OR_SERIAL
[--server PAIRING] [--hostname H] [--no-grow] [--shrink] [--no-fixups]
[--no-report]`, and
`ferry deploy --server PAIRING --list`.

SOURCE is the name of an image on the server given with --server, or else
a local qcow2/raw file or an http(s) URL of one. Image disks go to the
targets in order.
"""

from __future__ import annotations

import sys

from converters.errors import FerryError
from converters.events import EventStream, print_listener


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="V2P: write an image onto this machine's disks (erases them)",
        description=(
            "Write an image from ferry serve, an http(s) URL or a local file "
            "onto whole disks of this machine. Every target must be named "
            "again with --confirm (its name, /dev path or serial); the boot "
            "medium, read-only and busy disks are refused, and sizes are "
            "checked before anything is written."
        ),
    )
    p.add_argument(
        "--server", metavar="PAIRING", help="ferry://HOST:PORT/?fp=..&token=.."
    )
    p.add_argument("--list", action="store_true", help="list the server's images")
    p.add_argument("--image", metavar="SOURCE", help="image name, file or URL")
    p.add_argument("--target", default="", help="disks to write, comma-separated")
    p.add_argument(
        "--confirm", default="", help="the same disks again (name or serial)"
    )
    p.add_argument("--hostname", help="host name of the deployed system")
    p.add_argument("--no-grow", action="store_true", help="keep the image's size")
    p.add_argument(
        "--shrink",
        action="store_true",
        help="allow a smaller disk: the last partition's ext2/3/4 is shrunk "
        "when its used data fits (the plan is printed first)",
    )
    p.add_argument(
        "--no-fixups",
        action="store_true",
        help="a raw copy: do not adapt the system to this machine",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="with --server: the deployed system does not report its first "
        "boot to the server (on by default; a file or URL never reports)",
    )
    p.set_defaults(func=main)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(args) -> int:
    from converters import deploy as engine
    from converters.wire.errors import WireError

    try:
        if args.list:
            if not args.server:
                raise FerryError("--list needs --server")
            for info in engine.list_images(args.server):
                disks = ", ".join(f"{n} {s} bytes" for n, s in info.disks)
                print(f"{info.name}\t{info.kind}\t{disks}")
            return 0
        if not args.image:
            raise FerryError("--image is required (or --list with --server)")
        image = args.image
        if args.server:
            found = [i for i in engine.list_images(args.server) if i.name == image]
            if not found:
                raise FerryError(f"the server offers no image {image}")
            image = found[0]
            names = [n for n, _ in image.disks]
        else:
            names = list(engine.image_disks(image))
        targets = _split(args.target)
        if not targets:
            raise FerryError("--target is required: the disks to write")
        if len(targets) > len(names):
            raise FerryError(
                f"{len(targets)} targets for an image of {len(names)} disk(s)"
            )
        request = engine.DeployRequest(
            image=image,
            targets=list(zip(names, targets, strict=False)),
            confirm=_split(args.confirm),
            hostname=args.hostname,
            grow=not args.no_grow,
            shrink=args.shrink,
            fixups=not args.no_fixups,
            report=bool(args.server) and not args.no_report,
        )
        events = EventStream()
        events.subscribe(print_listener(sys.stderr))
        result = engine.deploy(request, events)
    except (engine.DeployError, WireError, ValueError) as e:
        raise FerryError(str(e)) from None
    armed = result.fixups.first_boot if result.fixups else None
    if armed:
        print(
            f"{armed.hostname} will report its first boot to ferry serve at "
            f"{armed.server} (report {armed.report_id}; GET /v1/reports lists it)"
        )
    return 0
