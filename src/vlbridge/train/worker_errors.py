"""Errors of DataLoader worker processes, carried to the training loop as the objects they were raised as.

torch re-raises an exception from a worker as a new one of its type whose message is the worker's whole traceback
("Caught DataError in DataLoader worker process 0. Original Traceback ..."): with `data.num_workers` above 0, the
one-line DataError of a bad record reached the user as 14 lines, and without its file and line attributes. Here the
worker catches a VlbridgeError itself and hands it back in the batch's place (pickled whole, attributes and all), and
the loop raises it as it was, so a bad record reads the same with workers as without.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from vlbridge.errors import VlbridgeError


@dataclass(frozen=True)
class CarriedError:
    """A VlbridgeError raised while a sample was read or a batch collated, in the place of what was asked for."""

    error: VlbridgeError


class CarryErrors(Dataset):
    """`dataset`, whose items come back as a CarriedError instead of raising a VlbridgeError."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except VlbridgeError as err:
            return CarriedError(err)


class CarryErrorsCollate:
    """`collate_fn` over CarryErrors samples: the first CarriedError among them is the batch, and a VlbridgeError
    collation raises becomes one (a class, not a closure, so worker processes can be spawned with it)."""

    def __init__(self, collate_fn: Callable[[Sequence[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: Sequence[Any]) -> Any:
        carried = next((sample for sample in samples if isinstance(sample, CarriedError)), None)
        if carried is not None:
            return carried
        try:
            return self.collate_fn(samples)
        except VlbridgeError as err:
            return CarriedError(err)


def raise_carried(batch: Any) -> Any:
    """`batch`, unless it carries an error: then that error, raised as it was."""
    if isinstance(batch, CarriedError):
        raise batch.error
    return batch
