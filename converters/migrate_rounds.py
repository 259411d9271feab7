"""From QEMU's migration counters to the policy's rounds.

QEMU does not report rounds; it reports running totals (`query-migrate`:
`ram.transferred`, `ram.remaining`, `ram.normal` + `ram.duplicate` pages
sent) and counts its dirty-bitmap syncs (`ram.dirty-sync-count`). A sync
ends a round: QEMU takes one when a pass over its bitmap finishes or when
the rest fell under its downtime threshold (ram_save_pending,
migration/ram.c, QEMU 7.2). The migration starts with one sync already done,
so the count reaching n + 1 ends round n.

Between two readings the dirty set evolves as
    left = left_before - pages sent + pages newly dirtied,
so newly dirtied = left - left_before + sent, from counters read at the same
moments: exact however late the reading comes after the sync. It counts
distinct pages, like QEMU's own `dirty-pages-rate`.

A disk mirror adds its bytes: copied (`offset`) is what it sent, the growth
of its target (`len`) what the guest dirtied, and `len - offset` what is
left. The policy then sees memory and disks as one dirty set."""

from __future__ import annotations

from dataclasses import dataclass

from converters.migrate_disks import MirrorStatus
from converters.precopy_policy import Round

# Readings differ from round to round by a few hundred pages that the guest
# kernel itself dirties (timers, console, page tables), and by where in a pass
# QEMU's early sync falls. A writer that saturates its working set makes
# sent, dirtied and left equal but for that noise, and a strict comparison
# would then flip a coin every round (measured here: 48.1 vs 48.5 MiB left in
# alternate rounds of one hostile writer). Differences within NOISE are
# reported as ties, which the policy's non-diffusion rule reads as no gain.
NOISE = 0.02


def tie(value: int, reference: int, noise: float = NOISE) -> int:
    """`reference` when `value` is within `noise` of it, else `value`."""
    if abs(value - reference) <= noise * max(value, reference):
        return reference
    return value


@dataclass(frozen=True)
class Counters:
    """One reading of the totals."""

    t: float  # time.monotonic() of the reading
    transferred: int  # memory bytes on the wire
    pages: int  # memory pages sent (normal + zero)
    remaining: int  # dirty memory bytes not yet sent
    disk: MirrorStatus | None = None

    @classmethod
    def read(cls, t: float, ram: dict, disk: MirrorStatus | None) -> Counters:
        pages = ram["normal"] + ram["duplicate"]
        return cls(t, ram["transferred"], pages, ram["remaining"], disk)


class RoundTracker:
    """Feed it every `query-migrate` reading; it returns a `Round` when
    QEMU synced its dirty bitmap since the previous round."""

    def __init__(self, memory: int, start: float, disk: MirrorStatus | None = None):
        self.start = start
        # Before the first pass everything is dirty and nothing is sent.
        self.mark = Counters(start, 0, 0, memory, disk)
        self.count = 1
        self.previous: Round | None = None

    def update(self, t: float, ram: dict, disk: MirrorStatus | None) -> Round | None:
        count = ram.get("dirty-sync-count", 0)
        if count <= self.count:
            return None
        now, mark = Counters.read(t, ram, disk), self.mark
        page = ram.get("page-size", 4096)
        sent = now.transferred - mark.transferred
        left = now.remaining
        dirtied = max(0, left - mark.remaining + (now.pages - mark.pages) * page)
        if disk and mark.disk:
            sent += disk.copied - mark.disk.copied
            dirtied += max(0, disk.total - mark.disk.total)
            left += disk.remaining
        sent = max(0, sent)
        if self.previous:
            left = tie(left, self.previous.bytes_remaining)
        dirtied = tie(dirtied, sent)
        bandwidth = sent / max(t - mark.t, 1e-3)
        r = Round(count - 1, sent, dirtied, left, bandwidth, t - self.start, page)
        self.mark, self.count, self.previous = now, count, r
        return r
