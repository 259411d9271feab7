"""Render SVG snapshots to PNG for the docs (not a test).

    python -m tests.tui.render_svg SVG... OUTDIR

rsvg-convert (Debian's librsvg2-bin) collapses runs of spaces unless the
SVG asks it not to, which Textual's export does not: right-aligned columns
and indented lines would move. xml:space="preserve" keeps them. Fira Code
(fonts-firacode), the font the SVGs name, keeps the cells square.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def render(svg: Path, png: Path) -> Path:
    text = svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1)
    subprocess.run(
        ["rsvg-convert", "--format=png", "--output", str(png)],
        input=text.encode(),
        check=True,
    )
    return png


def main(argv: list[str]) -> int:
    *svgs, outdir = argv
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for name in svgs:
        svg = Path(name)
        print(render(svg, out / f"{svg.stem.removeprefix('test_')}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
