#!/usr/bin/env python
"""SFTP download throughput: our SftpTransport (paramiko) against OpenSSH's own ``sftp`` client.

Starts the same throw-away sshd the tests use (cdp_pipeline_tests/fixtures/sshd.py, so it must
run as root), writes random files into the key user's home, and times:

  (a) one large file with SftpTransport.download,
  (b) a delivery of several files with SftpTransport, one connection and --parallel connections,
  (c) the same single file and delivery with ``sftp -b`` (batch mode, pinned host key, ed25519 key),
      with its defaults and once more with our cipher and request size (-c aes128-gcm, -B 261120),
  (d) one upload of the large file, with SftpTransport.upload and with ``sftp -b put``.

After the timed rounds every downloaded and uploaded file is compared with its source (SHA-256).

Files are read once before timing so every run works from a hot page cache and measures the
transfer, not the disk. MB = 1,000,000 bytes.

    python bench/sftp_transfer.py --single-mb 500 --delivery-files 5 --delivery-mb 100 --repeat 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdp_pipeline.transports.base import RemoteFile  # noqa: E402
from cdp_pipeline.transports.sftp import SftpTransport  # noqa: E402
from cdp_pipeline_tests.fixtures.sshd import SshdServer, start_sshd, stop_sshd  # noqa: E402

MB = 1_000_000
ROLE = "key"


def write_random_file(path: Path, size: int) -> None:
    chunk = os.urandom(8 * 1024 * 1024)  # reused: SSH does not compress, so repetition does not help it
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            piece = chunk[: min(len(chunk), remaining)]
            handle.write(piece)
            remaining -= len(piece)


def warm(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as handle:
            while handle.read(16 * 1024 * 1024):
                pass


def timed(action: Callable[[], object], repeat: int, clean: Callable[[], None]) -> list[float]:
    seconds = []
    for _ in range(repeat):
        clean()
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    clean()
    return seconds


def openssh_batch(server: SshdServer, known_hosts: Path, batch_lines: list[str], batch: Path, tuned: bool = False) -> str:
    """Run OpenSSH ``sftp -b``; returns the negotiated cipher (from ``-v``)."""
    batch.write_text("".join(line + "\n" for line in batch_lines))
    command = [
        "sftp",
        "-v",
        *(["-c", "aes128-gcm@openssh.com", "-B", "261120"] if tuned else []),
        "-b",
        str(batch),
        "-P",
        str(server.port),
        "-i",
        str(server.keys["ed25519"].path),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        f"{server.user(ROLE).name}@{server.host}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if completed.returncode != 0:
        raise RuntimeError(f"sftp failed ({completed.returncode}): {completed.stderr[-2000:]}")
    match = re.search(r"kex: server->client cipher: (\S+) MAC: (\S+)", completed.stderr)
    return f"{match.group(1)} / {match.group(2)}" if match else "unknown"


def openssh_get(server: SshdServer, known_hosts: Path, remote_paths: list[str], local_dir: Path, tuned: bool = False) -> str:
    lines = [f'get "{remote}" "{local_dir / Path(remote).name}"' for remote in remote_paths]
    return openssh_batch(server, known_hosts, lines, local_dir.parent / "sftp.batch", tuned)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def paramiko_cipher(transport: SftpTransport) -> str:
    transport.exists(".")  # connect
    ssh = transport.connection.ssh
    assert ssh is not None
    mac = "<implicit>" if "gcm" in ssh.remote_cipher else ssh.remote_mac
    return f"{ssh.remote_cipher} / {mac}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single-mb", type=int, default=500, help="size of the single file (default 500)")
    parser.add_argument("--delivery-files", type=int, default=5, help="files in the delivery (default 5)")
    parser.add_argument("--delivery-mb", type=int, default=100, help="size of each delivery file (default 100)")
    parser.add_argument("--parallel", type=int, default=2, help="connections for the parallel delivery (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    parser.add_argument("--server-dir", default="/run", help="where sshd's files and the test data live")
    parser.add_argument("--local-dir", default="/var/tmp", help="where downloads land")
    options = parser.parse_args()

    server = start_sshd(options.server_dir)
    local_root = Path(tempfile.mkdtemp(prefix="cdp-sftp-bench-", dir=options.local_dir))
    try:
        user = server.user(ROLE)
        inbox = server.fresh_directory(ROLE, "bench")
        single_name = f"{inbox}/single.bin"
        delivery_names = [f"{inbox}/delivery_{index}.bin" for index in range(options.delivery_files)]
        server_files = [server.server_path(ROLE, name) for name in [single_name, *delivery_names]]
        server.make_directory(ROLE, inbox)
        write_random_file(server_files[0], options.single_mb * MB)
        for path in server_files[1:]:
            write_random_file(path, options.delivery_mb * MB)
        for path in server_files:
            os.chown(path, user.uid, user.gid)
        warm(server_files)

        downloads = local_root / "downloads"
        known_hosts = local_root / "known_hosts"
        known_hosts.write_text(server.host_key_line + "\n")

        def clean() -> None:
            shutil.rmtree(downloads, ignore_errors=True)
            downloads.mkdir()

        settings = server.settings(ROLE, "private_key", "ed25519", home_directory=user.login_directory, timeout_seconds=60)
        transport = SftpTransport(settings.location, settings.secrets)
        ours_cipher = paramiko_cipher(transport)
        listing = {remote.path: remote for remote in transport.list_files(inbox)}
        single = listing[transport.resolve(single_name)]
        delivery: list[RemoteFile] = [listing[transport.resolve(name)] for name in delivery_names]
        delivery_bytes = sum(remote.size for remote in delivery)

        openssh_cipher = ""

        def openssh(paths: list[str], tuned: bool = False) -> None:
            nonlocal openssh_cipher
            cipher = openssh_get(server, known_hosts, paths, downloads, tuned)
            if not tuned:
                openssh_cipher = cipher

        single_remote = posix_absolute(user.login_directory, single_name)
        delivery_remote = [posix_absolute(user.login_directory, name) for name in delivery_names]
        delivery_targets = [(remote, downloads / remote.name) for remote in delivery]
        upload_source = server_files[0]  # the single file, read from the page cache
        upload_name = f"{inbox}/uploads/single.bin"
        upload_on_server = server.server_path(ROLE, upload_name)
        server.make_directory(ROLE, f"{inbox}/uploads")

        # Each of our runs starts from a closed connection, as `sftp` starts a new process: both
        # timings include connecting and authenticating.
        def ours_single() -> None:
            transport.close()
            transport.download(single, downloads / "single.bin")

        def ours_delivery(parallel: int) -> None:
            transport.close()
            transport.download_many(delivery_targets, parallel=parallel)

        def ours_upload() -> None:
            transport.close()
            transport.upload(upload_source, upload_name)

        def openssh_upload() -> None:
            line = f'put "{upload_source}" "{posix_absolute(user.login_directory, upload_name)}"'
            openssh_batch(server, known_hosts, [line], local_root / "sftp.batch")

        n = len(delivery)
        measurements: list[tuple[str, int, Callable[[], object]]] = [
            ("(a) SftpTransport.download, 1 file", single.size, ours_single),
            (f"(b) SftpTransport delivery, {n} files, 1 connection", delivery_bytes, lambda: ours_delivery(1)),
            (
                f"(b) SftpTransport.download_many, {n} files, parallel={options.parallel}",
                delivery_bytes,
                lambda: ours_delivery(options.parallel),
            ),
            ("(c) OpenSSH sftp -b, 1 file", single.size, lambda: openssh([single_remote])),
            (f"(c) OpenSSH sftp -b, {n} files", delivery_bytes, lambda: openssh(delivery_remote)),
            ("(c) OpenSSH sftp -b -c aes128-gcm -B 261120, 1 file", single.size, lambda: openssh([single_remote], True)),
            (f"(c) OpenSSH sftp -b -c aes128-gcm -B 261120, {n} files", delivery_bytes, lambda: openssh(delivery_remote, True)),
            ("(d) SftpTransport.upload, 1 file", single.size, ours_upload),
            ("(d) OpenSSH sftp -b put, 1 file", single.size, openssh_upload),
        ]
        # Rounds interleave the measurements: other work on a shared machine then slows all of
        # them alike instead of whichever happened to run during the busy minute.
        seconds: dict[str, list[float]] = {label: [] for label, _, _ in measurements}
        load_before = os.getloadavg()[0]
        for _ in range(options.repeat):
            for label, _, action in measurements:
                seconds[label].extend(timed(action, 1, clean))
        load_after = os.getloadavg()[0]

        # Speed means nothing if the bytes are wrong: run each of ours once more and compare.
        ours_single()
        ours_delivery(options.parallel)
        ours_upload()
        # Memory: Python's peak allocation during one more single-file download (outside the timing,
        # tracemalloc slows every allocation). Bounded by the requests in flight, not the file size.
        tracemalloc.start()
        ours_single()
        download_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        expected = {path.name: sha256_of(path) for path in server_files}
        received = {path.name: sha256_of(path) for path in sorted(downloads.iterdir())}
        if received != expected or sha256_of(upload_on_server) != expected[upload_source.name]:
            raise SystemExit("a transferred file differs from its source")
        transport.close()
        results = [(label, size, seconds[label]) for label, size, _ in measurements]

        print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
        print(f"command: python bench/sftp_transfer.py {' '.join(sys.argv[1:])}")
        print(f"ciphers (server->client): paramiko {ours_cipher}; OpenSSH {openssh_cipher}")
        print(f"load average (1 min) before/after: {load_before:.1f} / {load_after:.1f}")
        print("content check: every downloaded and uploaded file matches its source (SHA-256)")
        print(f"peak Python allocation during a {single.size / MB:.0f} MB download: {download_peak / 2**20:.1f} MiB (tracemalloc)")
        print()
        print("| measurement | MB | median s | MB/s (median) | runs (s) |")
        print("|---|---:|---:|---:|---|")
        rates: dict[str, float] = {}
        for label, size, runs_seconds in results:
            median = statistics.median(runs_seconds)
            rates[label] = size / MB / median
            runs = ", ".join(f"{value:.2f}" for value in runs_seconds)
            print(f"| {label} | {size / MB:.0f} | {median:.2f} | {rates[label]:.0f} | {runs} |")
        labels = [label for label, _, _ in results]
        print()
        print(f"single file: ours takes {rates[labels[3]] / rates[labels[0]]:.2f}x OpenSSH's time")
        print(f"delivery, 1 connection: ours takes {rates[labels[4]] / rates[labels[1]]:.2f}x OpenSSH's time")
        print(f"delivery, parallel={options.parallel}: ours takes {rates[labels[4]] / rates[labels[2]]:.2f}x OpenSSH's time")
        print(f"delivery, 1 connection, against OpenSSH tuned alike: {rates[labels[6]] / rates[labels[1]]:.2f}x")
        print(f"upload: ours takes {rates[labels[8]] / rates[labels[7]]:.2f}x OpenSSH's time")
        return 0
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
        stop_sshd(server)


def posix_absolute(home: str, relative: str) -> str:
    return f"{home.rstrip('/')}/{relative}"


if __name__ == "__main__":
    raise SystemExit(main())
