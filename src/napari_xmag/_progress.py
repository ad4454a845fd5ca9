"""One progress reporter for long loops: a tqdm bar, a caller's callback, or nothing."""

from __future__ import annotations

from collections.abc import Callable

from tqdm.auto import tqdm


def progress_bar(
    progress: bool | Callable[[int, int], None], total: int, description: str, unit: str = "patch"
) -> Callable[[int | None], None]:
    """``update(done)``, and ``update(None)`` to close. A callable gets (done, total)."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None

    bar = tqdm(total=total, desc=description, unit=unit, leave=False)

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update
