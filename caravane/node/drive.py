"""The drive as an upstream of the sync engine, read as hostile input.

After the bundle's packs are applied, one sync pass with the drive as the only upstream
switches releases in. That pass reads the drive's ``caravane/repo`` folder like any
repository folder, but through ``packs.drive_io.Drive``: no link is followed (a ``metadata``
folder that points into the centre's disk is refused), only regular files are opened (a
FIFO cannot hang the pass, a link to ``/dev/zero`` cannot feed it forever), and the engine's
own bound on each read still applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from caravane.packs.bundle import BUNDLE_DIR
from caravane.packs.drive_io import Drive, DriveError

from .errors import UpstreamError, UpstreamNotFound
from .upstream import BLOCK, FolderUpstream


class DriveUpstream(FolderUpstream):
    """A drive's bundle repository (``caravane/repo``) read without following anything."""

    def __init__(self, drive: Path, cost: int = 0) -> None:
        super().__init__(f"drive:{drive}", Path(drive) / BUNDLE_DIR / "repo", cost, "folder")
        self.drive = Drive(Path(drive))

    def _fetch(self, path: str, offset: int, limit: int) -> Iterator[bytes]:
        try:
            fh = self.drive.open(f"{BUNDLE_DIR}/repo/{path}")
        except FileNotFoundError:
            raise UpstreamNotFound(self.name, f"{path}: not on this drive") from None
        except DriveError as exc:
            raise UpstreamError(self.name, str(exc)) from None
        with fh:
            fh.seek(offset)
            got = 0
            while block := fh.read(BLOCK):
                got += len(block)
                self._wire(len(block))
                yield block
                if offset + got > limit:
                    return  # the caller refuses it; never read on past the bound

    def probe(self) -> bool:
        return self.drive.exists(f"{BUNDLE_DIR}/repo/metadata/root.json")


__all__ = ["DriveUpstream"]
