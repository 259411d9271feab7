"""The wire: how disks move between the live side and ``ferry serve``.

HTTP/1.1 over TLS (docs/protocol.md). ``client`` sends extent maps,
``server`` receives them into storage ``backends``; ``protocol`` holds what
both sides agree on, ``pairing`` how they find and trust each other and
``journal`` what the receiver has committed.
"""
