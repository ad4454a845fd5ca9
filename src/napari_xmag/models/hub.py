"""Weights from the Hugging Face Hub: downloaded (or found in the cache), never run.

Through ``huggingface_hub`` with its normal cache and ``HF_TOKEN``. Offline (``HF_HUB_OFFLINE=1``,
no network) or refused (gated, 401) it raises :class:`WeightsError` naming what failed and where to
put the file. Only weight files are fetched: no ``trust_remote_code``, no code of the repository.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from .files import DIR_PREFERRED, WEIGHT_SUFFIXES, WeightsError, find_weights_file, first_line

__all__ = ["HUB_PREFIX", "download_from_hub"]

HUB_PREFIX = "hf-hub:"




#: Seconds to wait for a TCP connection to the hub before calling it unreachable: without this,
#: huggingface_hub's retries made an offline ``xmag embed`` wait 23-25 s for its message.
CONNECT_TIMEOUT_S = 2.0


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub's host answers a TCP connection within :data:`CONNECT_TIMEOUT_S`;
    asked once per process. Behind a proxy (``HTTPS_PROXY``) the answer is left to the proxy."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = str(getattr(hf_constants, "ENDPOINT", "https://huggingface.co"))
    url = urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def snapshot_revision(path: str | os.PathLike[str]) -> str | None:
    """The hub commit a cached file belongs to (``.../snapshots/<40 hex>/...``), or None."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and i + 1 < len(parts) and len(parts[i + 1]) == 40:
            return parts[i + 1]
    return None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_cache_dir() -> str | None:
    """The cache folder from the environment as it is now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _offline_help(repo_id: str, filenames: Sequence[str], model: str | None, gated: bool, cache: str) -> str:
    url = f"https://huggingface.co/{repo_id}"
    access = (
        f"accept the model's terms at {url} with your account, set HF_TOKEN (or run `hf auth login`), then "
        if gated
        else ""
    )
    named = f"create_model({model!r}, weights=PATH)" if model else "create_model(PATH)"
    return (
        f"To use these weights without network access: on a connected machine {access}download "
        f"{' or '.join(filenames)} from {url}, copy the file to this machine and pass its path as "
        f"the model (create_model(PATH); CLI --model PATH) or as the weights ({named}). "
        f"Or copy a Hugging Face cache that holds the repository and set HF_HOME to it "
        f"(the cache searched here was {cache})."
    )


def download_from_hub(
    repo_id: str,
    filenames: Sequence[str] = DIR_PREFERRED,
    *,
    model: str | None = None,
    gated: bool = False,
    any_weights: bool = True,
) -> Path:
    """Local path of the first of ``filenames`` in hub repository ``repo_id``, downloading if needed.

    Uses the normal Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``) and ``HF_TOKEN``.
    Honours ``HF_HUB_OFFLINE=1`` as set at call time. If none of ``filenames`` exists and
    ``any_weights`` is true, the repository's single weight file is used instead.
    Every failure raises :class:`WeightsError` saying what failed and how to work offline.
    """
    if "HF_HUB_OFFLINE" in os.environ:  # as set now; huggingface_hub read it at its import
        offline = _env_true("HF_HUB_OFFLINE")
    else:
        offline = bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))
    cache_dir = _hub_cache_dir()
    cache_shown = cache_dir or str(getattr(hf_constants, "HF_HUB_CACHE", "~/.cache/huggingface/hub"))
    token = os.environ.get("HF_TOKEN") or None
    where = f"hf-hub:{repo_id}" + (f" (model {model!r})" if model else "")
    unreachable = not offline and not hub_reachable()  # then the cache only: an answer at once
    missing_remote: list[str] = []

    def fail(reason: str, exc: BaseException | None = None) -> WeightsError:
        err = WeightsError(
            f"cannot get weights from {where}: {reason}. "
            + _offline_help(repo_id, filenames, model, gated, cache_shown)
        )
        if exc is not None:
            err.__cause__ = exc
        return err

    for name in filenames:
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    name,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=offline or unreachable,
                )
            )
        except GatedRepoError as exc:  # noqa: PERF203  (one try per file name, two names at most)
            raise fail(
                f"the repository is gated and this account has not been granted access "
                f"({'HF_TOKEN is set' if token else 'no HF_TOKEN set'})",
                exc,
            ) from exc
        except RepositoryNotFoundError as exc:
            raise fail(
                "the repository was not found or access was refused (401): check the id; a gated or "
                "private repository needs HF_TOKEN",
                exc,
            ) from exc
        except LocalEntryNotFoundError:
            # Offline, or the hub could not be reached: look no further on the network.
            unreachable = True
            continue
        except EntryNotFoundError:
            missing_remote.append(name)
            continue
        except HfHubHTTPError as exc:
            raise fail(f"the hub answered with an error: {first_line(exc)}", exc) from exc
        except (OSError, ValueError) as exc:
            raise fail(f"{type(exc).__name__}: {first_line(exc)}", exc) from exc

    listed: list[str] = []
    if any_weights:
        # Fall back to the repository's weight file: from the cache offline, else from its listing.
        try:
            if offline or unreachable:
                folder = snapshot_download(repo_id, cache_dir=cache_dir, token=token, local_files_only=True)
                return find_weights_file(folder)
            files = HfApi(token=token).list_repo_files(repo_id)
            listed = sorted(f for f in files if "/" not in f and Path(f).suffix.lower() in WEIGHT_SUFFIXES)
            safetensors = [f for f in listed if f.lower().endswith(".safetensors")]
            chosen = safetensors or listed
            if len(chosen) == 1:
                return Path(hf_hub_download(repo_id, chosen[0], cache_dir=cache_dir, token=token))
        except LocalEntryNotFoundError:
            pass  # nothing cached: reported below
        except WeightsError as exc:  # a cached snapshot without one clear weight file
            raise fail(str(exc), exc) from exc
        except GatedRepoError as exc:
            raise fail("the repository is gated and this account has not been granted access", exc) from exc
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise fail(f"listing the repository failed: {first_line(exc)}", exc) from exc

    if offline:
        raise fail("offline mode is on (HF_HUB_OFFLINE=1) and the files are not in the local cache")
    if unreachable:
        raise fail(f"no network: {getattr(hf_constants, 'ENDPOINT', 'the hub')} could not be reached and the"
                   " files are not in the local cache")
    if len(listed) > 1:
        raise fail(
            f"the repository has several weight files ({', '.join(listed)}) and none of the usual names"
        )
    raise fail(f"the repository has none of {', '.join(missing_remote or filenames)}")


