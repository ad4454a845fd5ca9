"""The data order: which pairs each step sees, on each rank, reproducibly from any step.

``torch.utils.data.DistributedSampler`` gives every rank its share of an epoch's permutation
(seeded by ``seed + epoch``). :class:`ResumableSampler` starts that share at any batch, so
that a run resumed at step ``s`` sees exactly the batches an uninterrupted run would have,
and yields ``(position, epoch)`` keys: the epoch seeds each sample's augmentation (see
:mod:`~napari_xmag.distill.augment`), independently of workers.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler

__all__ = ["ResumableSampler"]


class ResumableSampler(Sampler[tuple[int, int]]):
    def __init__(
        self, size: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        # drop_last: every rank gets the same number of samples, no padding repeats.
        self._inner = DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Full batches per epoch on each rank (the last partial batch is dropped)."""
        return len(self._inner) // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self._inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(self._inner)[: self.batches_per_epoch * self.batch_size]
        for position in order[self.start_batch * self.batch_size :]:
            yield position, self.epoch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size
