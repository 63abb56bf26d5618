"""A delivery's work folder for one step of its import, wherever the settings keep it.

With ``work_storage: local`` a step works in ``CDP_HOME/work/<connection>/<delivery>`` as it always
has. With ``work_storage: s3`` a step works in a private scratch folder of its own (``CDP_SCRATCH_DIR``,
else ``CDP_HOME/scratch``): it pulls from ``s3://<bucket>/<prefix>/<connection>/<delivery>/`` the
parts the step reads, does its work, pushes what it wrote, and its scratch copy is removed when the
step ends, however it ends. A step in another process, pod or host therefore continues where the
previous one stopped, and no plaintext stays on the disk of the machine that ran it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cdp_pipeline import importing
from cdp_pipeline.config.loading import ProjectConfig
from cdp_pipeline.disk_space import HEADROOM, require_free_space
from cdp_pipeline.errors import CdpError
from cdp_pipeline.fault_injection import fault_point
from cdp_pipeline.private_files import private_directory
from cdp_pipeline.scratch import scratch_root

if TYPE_CHECKING:  # boto3 is imported only by a run with work_storage s3 (0.3-1.4 s of every run's start)
    from cdp_pipeline.work_storage.bucket import WorkBucket

logger = logging.getLogger(__name__)

Step = Literal["fetch", "decrypt", "stage", "merge"]
#: the folders of a work folder holding customer data (the manifests and reject report name files,
#: lines and reasons).
CUSTOMER_DATA = ("fetched/", "decrypted/", "tables/")
#: manifests whose file entries carry the local path of the step that wrote them.
_MANIFESTS = ("fetched.json", "decrypted.json")


@dataclass(frozen=True)
class StepFiles:
    """What a step reads of the work folder and what it leaves there; a name ending in ``/`` is a
    folder. A push writes the folders before the files (manifests, markers, the reject report), so
    a manifest never names files that are not there yet."""

    pulls: tuple[str, ...]
    required: tuple[str, ...]
    pushes: tuple[str, ...]
    #: what a failed step still leaves for whoever fixes the delivery (the reject report).
    pushes_on_failure: tuple[str, ...] = ()


STEPS: dict[Step, StepFiles] = {
    "fetch": StepFiles(pulls=(), required=(), pushes=("fetched/", "fetched.json")),
    "decrypt": StepFiles(pulls=("fetched.json", "fetched/"), required=("fetched.json",), pushes=("decrypted/", "decrypted.json")),
    # The downloads' manifest names the files a quarantine moves; the downloads themselves are not
    # needed (decrypted.json records which files arrived encrypted).
    "stage": StepFiles(
        pulls=("fetched.json", "decrypted.json", "decrypted/"),
        required=("decrypted.json",),
        pushes=("tables/", importing.REJECT_REPORT, importing.GOAL_FILE, importing.SKIP_FILE),
        pushes_on_failure=(importing.REJECT_REPORT,),
    ),
    # The plaintext too: a dialect reads the files again around the merge (SARE's header and sidecar).
    "merge": StepFiles(
        pulls=("fetched.json", "decrypted.json", "decrypted/", "tables/", importing.GOAL_FILE, importing.SKIP_FILE),
        required=("decrypted.json", "tables/"),
        pushes=(),
    ),
}


@dataclass(frozen=True)
class DeliveryWork:
    """The work folder a step uses (``path``) and, with S3, the delivery's folder in the bucket."""

    path: Path
    bucket: WorkBucket | None = None
    #: ``<connection>/<delivery folder>/`` in the bucket.
    folder: str = ""

    @property
    def location(self) -> str:
        return self.bucket.uri(self.folder) if self.bucket is not None else str(self.path)

    def finished(self) -> None:
        """After the merge: nothing of the delivery stays in the bucket."""
        if self.bucket is not None:
            self.bucket.delete_below(self.folder)

    def quarantined(self) -> None:
        """The delivery's files were moved aside: its customer data leaves the bucket now; the
        manifests and the reject report stay for whoever fixes it (until the stale-work sweep)."""
        if self.bucket is not None:
            for folder in CUSTOMER_DATA:
                self.bucket.delete_below(self.folder + folder)


@contextmanager
def delivery_work(project: ProjectConfig, connection: str, partition_key: str, step: Step) -> Iterator[DeliveryWork]:
    """The delivery's work folder for ``step`` (see the module's description)."""
    settings = project.work_storage.s3
    if settings is None:
        yield DeliveryWork(path=importing.delivery_work_dir(project, connection, partition_key))
        return
    from cdp_pipeline.work_storage.bucket import WorkBucket

    bucket = WorkBucket(settings)
    scratch = Path(tempfile.mkdtemp(prefix=f"{step}-", dir=private_directory(scratch_root(project))))  # 0700
    try:
        # The same folder name and privacy as on local disk, only below the step's scratch folder.
        path = importing.delivery_work_dir(dataclasses.replace(project, home=scratch), connection, partition_key)
        work = DeliveryWork(path=path, bucket=bucket, folder=f"{connection}/{path.name}/")
        files = STEPS[step]
        _pull(bucket, work, files)
        try:
            yield work
        except BaseException:
            _push_after_failure(bucket, work, files.pushes_on_failure)
            raise
        _push(bucket, work, files.pushes)
    finally:
        _remove_scratch(scratch)


def _pull(bucket: WorkBucket, work: DeliveryWork, files: StepFiles) -> None:
    sizes = {item.key[len(work.folder) :]: item.size for item in bucket.objects(work.folder)}
    stored = set(sizes)
    unsafe = [key for key in stored if key.startswith("/") or {"", ".", ".."} & set(key.split("/"))]
    if unsafe:  # the keys become local paths: none may leave the step's folder
        raise CdpError(f"{work.location}: object {unsafe[0]!r} is not a work folder's file; remove it from the bucket")
    missing = [name for name in files.required if not any(_within(key, name) for key in stored)]
    if missing:
        raise CdpError(
            f"{work.location}: {', '.join(missing)} missing; the step before this one did not finish for this delivery "
            "(or its folder was cleaned after a day): run the import of the delivery again from its first step"
        )
    wanted = [key for name in files.pulls for key in sorted(stored) if _within(key, name)]
    require_free_space(work.path, int(sum(sizes[key] for key in wanted) * HEADROOM), f"download the work of {work.location}")
    pulled: dict[str, Path] = {}
    for key in wanted:
        local = work.path / key
        if "/" in key:
            private_directory(local.parent)
        bucket.get_file(work.folder + key, local, {work.folder + k: p for k, p in pulled.items()})
        pulled[key] = local
    for manifest in _MANIFESTS:
        if manifest in pulled:
            named = _relocate(work.path / manifest, work.path)
            # A file its manifest names that is gone from the bucket (deleted by hand, a lifecycle
            # rule) would otherwise surface as a bare "no such file" deep inside the step.
            lost = [path for path in named if path.parent.name + "/" in files.pulls and not path.is_file()]
            if lost:
                raise CdpError(
                    f"{work.location}: {lost[0].parent.name}/{lost[0].name}, named by {manifest}, is missing from the bucket "
                    "(removed by hand or by a lifecycle rule?): run the import of the delivery again from its first step"
                )


def _within(key: str, name: str) -> bool:
    """Whether ``key`` is the file ``name`` or a file in the folder ``name`` (ending in ``/``)."""
    return key == name or (name.endswith("/") and key.startswith(name))


def _relocate(manifest: Path, work_dir: Path) -> list[Path]:
    """A manifest names each file by the local path of the step that wrote it; here it is the same
    file below this step's folder. Returns those paths."""
    data = json.loads(manifest.read_text())
    named = []
    for entry in data["files"]:
        written = Path(entry["local_path"])
        named.append(work_dir / written.parent.name / written.name)
        entry["local_path"] = str(named[-1])
    manifest.write_text(json.dumps(data, indent=2))
    return named


def _push(bucket: WorkBucket, work: DeliveryWork, names: tuple[str, ...]) -> None:
    """Make the bucket hold what the step left of ``names``: new and changed files written, files
    the step removed (a skip marker of an earlier attempt) deleted."""
    # The manifests and markers go first and come back last: a push cut short (a killed pod) must
    # not leave an earlier attempt's manifest naming files this attempt replaced.
    bucket.delete([work.folder + name for name in names if not name.endswith("/")])
    pulled = _links_by_inode(work.path)
    for name in (name for name in names if name.endswith("/")):
        local = work.path / name
        present = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else []
        keep = {str(p.relative_to(work.path)) for p in present}
        bucket.delete([item.key for item in bucket.objects(work.folder + name) if item.key[len(work.folder) :] not in keep])
        for path in present:
            _put(bucket, work, path, pulled)
    fault_point("work_push")
    for name in (name for name in names if not name.endswith("/")):
        if (work.path / name).is_file():
            _put(bucket, work, work.path / name, pulled)


def _put(bucket: WorkBucket, work: DeliveryWork, path: Path, pulled: dict[tuple[int, int], str]) -> None:
    relative = str(path.relative_to(work.path))
    stat = path.stat()
    source = pulled.get((stat.st_dev, stat.st_ino))
    if source is not None and source != relative:
        bucket.copy(work.folder + source, work.folder + relative)  # a plain file passed through decryption
    else:
        bucket.put_file(path, work.folder + relative)


def _links_by_inode(work_dir: Path) -> dict[tuple[int, int], str]:
    """Downloaded files by inode: a file the step wrote as a hard link of one is the same bytes."""
    found = {}
    folder = work_dir / "fetched"
    if folder.is_dir():
        for path in folder.iterdir():
            stat = path.stat()
            found[(stat.st_dev, stat.st_ino)] = str(path.relative_to(work_dir))
    return found


def _push_after_failure(bucket: WorkBucket, work: DeliveryWork, names: tuple[str, ...]) -> None:
    try:
        _push(bucket, work, tuple(name for name in names if (work.path / name).exists()))
    except CdpError as error:  # the step's own error is the one to report
        logger.error("could not keep %s in %s: %s", ", ".join(names), work.location, error)


def _remove_scratch(scratch: Path) -> None:
    def report(_function, path, error) -> None:
        logger.error("could not remove %s of a step's scratch folder: %s", path, error[1] if isinstance(error, tuple) else error)

    if sys.version_info >= (3, 12):
        shutil.rmtree(scratch, onexc=report)
    else:
        shutil.rmtree(scratch, onerror=report)
