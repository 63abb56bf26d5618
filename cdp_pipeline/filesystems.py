"""Which filesystem holds a path, and whether the store may live there.

DuckDB guards its single writer with a POSIX file lock and trusts fsync and rename. On NFS, SMB,
sshfs and other network or FUSE-over-network filesystems those are emulated, lost on a reconnect
or ignored: two hosts can both believe they hold the writer's lock, and a crash can leave a WAL
that cannot be replayed. So the store is refused there unless the operator says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MOUNTS_FILE = Path("/proc/mounts")

#: filesystem types (as /proc/mounts names them) whose locking and durability DuckDB cannot rely on.
NETWORK_TYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "9p", "afs", "coda", "ceph", "glusterfs",
        "lustre", "gpfs", "ocfs2", "gfs2", "davfs", "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.rclone",
        "fuse.gcsfuse", "fuse.goofys", "fuse.davfs2", "fuse.cephfs", "fuse.juicefs", "fuse.mountpoint-s3",
    }
)


@dataclass(frozen=True)
class Mount:
    point: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in paths as octal escapes.
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, plain)
    return field


def parse_mounts(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(point=_unescape(fields[1]), fs_type=fields[2], source=_unescape(fields[0])))
    return mounts


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding ``path`` (which need not exist yet): the longest mount point above it;
    the last one listed wins for the same point, as in the kernel (a later mount hides earlier)."""
    resolved = path.expanduser().resolve()
    best: Mount | None = None
    for mount in mounts:
        point = Path(mount.point)
        if (resolved == point or point in resolved.parents) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best


def network_filesystem(path: Path, mounts_file: Path | None = None) -> Mount | None:
    """The network mount holding ``path``, or None (also when the mount table cannot be read)."""
    try:
        text = (mounts_file or MOUNTS_FILE).read_text()
    except OSError:
        return None
    mount = mount_of(path, parse_mounts(text))
    return mount if mount is not None and mount.fs_type in NETWORK_TYPES else None


def store_filesystem_problem(path: Path, *, allowed: bool, mounts_file: Path | None = None) -> str | None:
    """One line naming the store's network filesystem and the fix, or None when it is local."""
    mount = network_filesystem(path, mounts_file)
    if mount is None:
        return None
    where = f"the store {path} is on a {mount.fs_type} network filesystem ({mount.source} mounted at {mount.point})"
    if allowed:
        return (
            f"{where}; store.allow_network_filesystem is true, so it is used anyway. DuckDB's file lock and crash "
            "recovery are not reliable there: make sure only one host ever runs the pipeline against it"
        )
    return (
        f"{where}: DuckDB's single-writer lock and crash recovery are not reliable there (two hosts can both write; "
        "a crash can leave a store that cannot be opened). Put store.path on a local disk (publish the analysts' copy "
        "to the share with store.published_path instead), or set store.allow_network_filesystem: true if one host "
        "alone ever writes it"
    )
