"""Wire and on-disk formats of Caravane: canonical encoding, keys, metadata, trust rules.

Nothing here does I/O beyond bytes in, bytes out, so every rule is testable without a
server, a disk layout or a network.
"""

FORMAT_VERSION = 1
