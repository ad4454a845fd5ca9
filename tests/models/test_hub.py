"""The Hugging Face hub offline: what failed, where to put files, and files put in the cache."""

from __future__ import annotations

import pytest
import torch

from checkpoints import TINY, dinov2_reference_cls, dinov2_state_dict, prefixed, tiny_reference_inputs
from napari_xmag.models import (
    WeightsError,
    create_model,
)


def test_offline_hub_says_what_failed_and_where_to_put_files(offline_hub):
    with pytest.raises(WeightsError) as info:
        create_model("xmag")  # weights="auto" is the hub repository, never random
    text = str(info.value)
    assert "hf-hub:AI4PATH/XMAG" in text and "HF_HUB_OFFLINE=1" in text
    assert "https://huggingface.co/AI4PATH/XMAG" in text
    assert "model.safetensors" in text and "--model PATH" in text and "HF_HOME" in text
    assert str(offline_hub / "hub") in text
    with pytest.raises(WeightsError, match=r"accept the model's terms .* HF_TOKEN"):
        create_model("hf-hub:MahmoodLab/UNI2-h", tiny=True)


def test_gated_or_unreachable_hub_errors_are_explained(tmp_path, monkeypatch):
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    def raising(error_type, message):
        def fake(*args, **kwargs):
            err = error_type.__new__(error_type)  # constructors differ between versions
            Exception.__init__(err, message)
            raise err

        return fake

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from napari_xmag.models import hub

    monkeypatch.setattr(hub, "hf_hub_download", raising(GatedRepoError, "401 gated"))
    with pytest.raises(WeightsError, match=r"gated and this account has not been granted access") as info:
        create_model("uni2-h", tiny=True)
    assert "https://huggingface.co/MahmoodLab/UNI2-h" in str(info.value)
    monkeypatch.setattr(hub, "hf_hub_download", raising(LocalEntryNotFoundError, "no network"))
    monkeypatch.setattr(hub, "snapshot_download", raising(LocalEntryNotFoundError, "no cache"))
    with pytest.raises(WeightsError, match=r"could not be reached and the files are not in the local cache"):
        create_model("virchow2", tiny=True)


def test_offline_hub_uses_files_put_in_the_cache(offline_hub):
    snapshot = offline_hub / "hub" / "models--AI4PATH--XMAG" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    sd = dinov2_state_dict(TINY["depth"], TINY["embed_dim"], seed=9)
    torch.save(prefixed(sd, "model."), snapshot / "pytorch_model.bin")
    model = create_model("xmag", tiny=True)
    assert model.weights.source == "hf-hub:AI4PATH/XMAG" and not model.weights.random
    x = tiny_reference_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), dinov2_reference_cls(sd, x, num_heads=TINY["num_heads"]))


def test_no_network_is_said_at_once(tmp_path, monkeypatch):
    """A hub that does not answer (here a closed port) is asked once, for 2 s at most; then the
    cache only, no retries: the offline message comes in well under 3 s."""
    import time

    from napari_xmag.models import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(hub.hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # discard: nobody listens
    hub.hub_reachable.cache_clear()
    asked = []
    real = hub.hf_hub_download

    def spy(*args, **kwargs):
        asked.append(kwargs["local_files_only"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "hf_hub_download", spy)
    start = time.monotonic()
    try:
        with pytest.raises(WeightsError, match=r"no network: http://127.0.0.1:9 could not be reached"):
            create_model("virchow2", tiny=True)
        assert time.monotonic() - start < 3.0
        assert asked and all(asked)  # the cache only, never the network
        assert hub.hub_reachable() is False
    finally:
        hub.hub_reachable.cache_clear()
