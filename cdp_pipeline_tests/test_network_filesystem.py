"""A store on a network filesystem is refused at load and by validate (DuckDB's single-writer file
lock and crash recovery are not reliable there), unless store.allow_network_filesystem says so.

The mount table is a file written by the test in /proc/mounts' format: mounting NFS or sshfs needs
privileges and servers a test cannot rely on, and which mount holds a path is pure logic over it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from cdp_pipeline import filesystems
from cdp_pipeline.config.loading import BUNDLED_CONFIG_DIR, inspect_project, load_project
from cdp_pipeline.errors import ConfigError

LOCAL = """\
/dev/sda1 / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
"""


def _mounts(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text(LOCAL + extra)
    return path


def test_the_longest_mount_point_above_a_path_holds_it(tmp_path):
    mounts = filesystems.parse_mounts(
        LOCAL
        + "fileserver:/export/cdp /srv/cdp nfs4 rw,vers=4.2 0 0\n"
        + "/dev/sdb1 /srv/cdp/local ext4 rw 0 0\n"
        + "//nas/Customer\\040Data /mnt/customer\\040data cifs rw 0 0\n"
    )
    assert filesystems.mount_of(Path("/srv/cdp/store.duckdb"), mounts).fs_type == "nfs4"
    # a local disk mounted inside the share holds what is below it
    assert filesystems.mount_of(Path("/srv/cdp/local/store.duckdb"), mounts).fs_type == "ext4"
    # /srv/cdpx is not under /srv/cdp: mount points are compared as paths, not as strings
    assert filesystems.mount_of(Path("/srv/cdpx/store.duckdb"), mounts).point == "/"
    # escaped spaces in both fields; a file that does not exist yet is placed by its folder
    share = filesystems.mount_of(Path("/mnt/customer data/new/store.duckdb"), mounts)
    assert (share.fs_type, share.source, share.point) == ("cifs", "//nas/Customer Data", "/mnt/customer data")


def test_only_network_types_are_reported(tmp_path):
    mounts = _mounts(tmp_path, "server:/x /srv/nfs nfs rw 0 0\nuser@host:/y /srv/sshfs fuse.sshfs rw 0 0\nhost /srv/p9 9p rw 0 0\n")
    for folder, fs_type in (("/srv/nfs", "nfs"), ("/srv/sshfs", "fuse.sshfs"), ("/srv/p9", "9p")):
        found = filesystems.network_filesystem(Path(folder) / "store.duckdb", mounts)
        assert found is not None and found.fs_type == fs_type
    assert filesystems.network_filesystem(Path("/tmp/store.duckdb"), mounts) is None
    assert filesystems.network_filesystem(Path("/var/lib/cdp/store.duckdb"), mounts) is None
    # an unreadable mount table is not a reason to refuse the store
    assert filesystems.network_filesystem(Path("/srv/nfs/store.duckdb"), tmp_path / "no-such-file") is None


def _config(tmp_path: Path, **store: object) -> Path:
    config = tmp_path / "config"
    shutil.copytree(BUNDLED_CONFIG_DIR, config)
    document = yaml.safe_load((config / "store.yaml").read_text())
    document["store"].update(store)
    (config / "store.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return config


def test_a_store_on_nfs_is_refused_with_the_mount_and_the_fix(tmp_path, monkeypatch):
    share = (tmp_path / "share").resolve()
    monkeypatch.setattr(filesystems, "MOUNTS_FILE", _mounts(tmp_path, f"fileserver:/export/cdp {share} nfs4 rw 0 0\n"))
    config = _config(tmp_path, path=str(share / "store.duckdb"))

    _project, problems = inspect_project(config, tmp_path / "home")
    [problem] = [line for line in problems if "network filesystem" in line]
    assert problem.startswith(f"{config / 'store.yaml'}: store.path: the store {share / 'store.duckdb'} is on a nfs4 network filesystem")
    assert f"(fileserver:/export/cdp mounted at {share})" in problem
    assert "Put store.path on a local disk" in problem and "store.allow_network_filesystem: true" in problem
    with pytest.raises(ConfigError, match="nfs4 network filesystem"):
        load_project(config, tmp_path / "home")

    # the analysts' copy may live on the share; only the store itself is refused
    local = _config(tmp_path / "local", path=str(tmp_path / "disk" / "store.duckdb"), published_path=str(share / "copy.duckdb"))
    assert [line for line in inspect_project(local, tmp_path / "home")[1] if "network" in line] == []


def test_allow_network_filesystem_loads_with_a_warning(tmp_path, monkeypatch, caplog):
    share = (tmp_path / "share").resolve()
    monkeypatch.setattr(filesystems, "MOUNTS_FILE", _mounts(tmp_path, f"me@host:/cdp {share} fuse.sshfs rw 0 0\n"))
    config = _config(tmp_path, path=str(share / "store.duckdb"), allow_network_filesystem=True)
    with caplog.at_level(logging.WARNING, logger="cdp_pipeline.config.loading"):
        project = load_project(config, tmp_path / "home")
    assert project.store.allow_network_filesystem is True
    assert any("fuse.sshfs network filesystem" in record.getMessage() and "only one host" in record.getMessage() for record in caplog.records)
