"""The wire: how disks move between the live side and ``ferry serve``.

HTTP/1.1 over TLS (docs/protocol.md). The sending side: ``client`` (upload,
with ``sources``, ``connection``, ``retry``, ``throttle`` and ``progress``).
The receiving side: ``server`` (aiohttp views), ``sessions``, ``diskio`` (one
disk's backend, journal and commit loop), ``storage`` (layout and records),
``journal`` and ``serve_command``. Both: ``protocol`` (limits, headers,
payload coding), ``pairing`` (trust), ``ranges`` and ``errors``.
"""
