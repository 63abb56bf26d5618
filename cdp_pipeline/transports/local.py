"""A folder on this machine standing in for the remote server (the embedded default and the demo)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from cdp_pipeline.errors import FileVanishedError, TransportError
from cdp_pipeline.transports.base import RemoteFile, Transport


class LocalTransport(Transport):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = f"file://{self.root}"

    def _path(self, remote_path: str) -> Path:
        # Remote paths are relative to the root; refuse anything that climbs out of it so a
        # hostile name in a drop folder cannot address files elsewhere on this machine.
        candidate = (self.root / remote_path.lstrip("/")).resolve()
        root = self.root.resolve()
        if candidate != root and root not in candidate.parents:
            raise TransportError(f"{remote_path!r} points outside {self.root}")
        return candidate

    def list_files(self, directory: str) -> list[RemoteFile]:
        folder = self._path(directory)
        if not folder.is_dir():
            raise TransportError(f"{self.uri}/{directory}: directory does not exist; create it or fix files.directory")
        found = []
        with os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    rel = os.path.relpath(entry.path, self.root.resolve()).replace(os.sep, "/")
                    found.append(RemoteFile(path=rel, size=info.st_size, mtime=info.st_mtime))
        return found

    def download(self, remote: RemoteFile, local_path: Path) -> int:
        source = self._path(remote.path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = local_path.with_name(local_path.name + ".part")
        try:
            shutil.copyfile(source, temporary)
        except FileNotFoundError:
            temporary.unlink(missing_ok=True)
            raise FileVanishedError(f"{self.uri}/{remote.path} disappeared before it could be read") from None
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk must not keep the part it managed to write
            raise
        size = temporary.stat().st_size
        if size != remote.size:
            temporary.unlink(missing_ok=True)
            raise FileVanishedError(
                f"{self.uri}/{remote.path} changed since it was listed ({remote.size} → {size} bytes); it is read again next time"
            )
        os.chmod(temporary, 0o600)
        os.replace(temporary, local_path)
        return size

    def upload(self, local_path: Path, remote_path: str) -> int:
        target = self._path(remote_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            shutil.copyfile(local_path, partial)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return target.stat().st_size

    def rename(self, remote_path: str, new_path: str) -> None:
        source, target = self._path(remote_path), self._path(new_path)
        if not source.exists() and target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    def delete(self, remote_path: str) -> None:
        self._path(remote_path).unlink(missing_ok=True)

    def exists(self, remote_path: str) -> bool:
        return self._path(remote_path).is_file()
