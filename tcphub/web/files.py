"""
L{WebRoot}: the files of C{--web-root}, served safely: regular files inside
the directory only (a symbolic link is followed only to a file inside it),
no dotfiles (C{.env}, C{.git/config}), no directory listings (a directory
serves its C{index.html}, or nothing).  C{twisted.web.static.File} alone
lists directories, serves dotfiles and follows links out of its root.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request

__all__ = ["WebRoot"]


class WebRoot(Resource):
    """C{directory}'s files at C{/}; children put on it (C{/ws}) come first."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self._root = os.path.realpath(directory)

    def getChild(self, path: bytes, request: Request) -> Any:
        segments = [path, *(request.postpath or [])]
        # The whole rest of the path is resolved here, at once.
        request.prepath = [*(request.prepath or []), *(request.postpath or [])]
        request.postpath = []
        found = self.resolve(segments)
        if found is None:
            return NoResource("No such file.")
        # Imported when used: importing twisted.web.static warns of its own deprecations.
        from twisted.web.static import File

        return File(found)

    def resolve(self, segments: list[bytes]) -> str | None:
        """The real path of the regular file that C{segments} name inside
        the root, or None (a dotfile, a name outside, a listing)."""
        names = []
        for index, segment in enumerate(segments):
            try:
                name = segment.decode("utf-8")
            except UnicodeDecodeError:
                return None
            last = index == len(segments) - 1
            if name == "" and last:
                name = "index.html"  # a directory's own page, never its listing
            if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
                return None
            names.append(name)
        candidate = os.path.join(self._root, *names)
        if os.path.isdir(candidate):
            candidate = os.path.join(candidate, "index.html")
        real = os.path.realpath(candidate)
        if not real.startswith(self._root + os.sep) or not os.path.isfile(real):
            return None
        return real
