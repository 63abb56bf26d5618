"""Where a delivery's intermediate files live between the steps of its import: this host's
``CDP_HOME/work`` or a prefix of an S3 bucket (``work_storage`` in store.yaml)."""

from cdp_pipeline.work_storage.steps import DeliveryWork, Step, delivery_work
from cdp_pipeline.work_storage.sweep import sweep_stale_work

__all__ = ["DeliveryWork", "Step", "delivery_work", "sweep_stale_work"]
