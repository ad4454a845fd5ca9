"""One model API for every registered model: :class:`XmagModel`.

A thin ``nn.Module`` around a timm ViT backbone. Teachers and the student answer the same
calls, so embedding, comparison and distillation code never branch on the model:

* :meth:`XmagModel.preprocess`: ``(B, H, W, 3)`` uint8 RGB -> normalised ``(B, 3, H, W)`` float;
* :meth:`XmagModel.forward_features`: every token after the final norm, ``(B, T, D)``;
* :meth:`XmagModel.embed`: the pooled ``(B, E)`` float32 embedding, and on request the patch
  tokens as a ``(B, gh, gw, D)`` grid with class and register tokens removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .registry import ModelSpec
from .weights import WeightsInfo

__all__ = ["XmagModel"]


class XmagModel(nn.Module):
    """A registered backbone with its spec, weight provenance and optional distillation heads.

    Built by :func:`napari_xmag.models.create_model`; ``forward`` is :meth:`embed`.
    """

    #: The registered buffers, typed (nn.Module's attributes are not).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        spec: ModelSpec,
        backbone: nn.Module,
        *,
        weights: WeightsInfo | None = None,
        heads: nn.ModuleDict | None = None,
        tiny: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        # a timm VisionTransformer: its attributes (embed_dim, patch_embed, ...) are not typed
        self.backbone: Any = backbone
        self.heads = heads
        self.weights = weights if weights is not None else WeightsInfo("random", None, True)
        self.tiny = tiny
        self.overrides: dict[str, Any] = dict(overrides or {})
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    # -- shape facts -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def width(self) -> int:
        """Token width ``D`` of the backbone."""
        return int(self.backbone.embed_dim)

    @property
    def embed_dim(self) -> int:
        """Size of the pooled embedding (``2 * width`` for ``cls+mean`` models)."""
        return self.spec.embed_dim_for(self.width)

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_embed.patch_size[0])

    @property
    def input_size(self) -> tuple[int, int]:
        """The ``(H, W)`` the backbone was built for."""
        h, w = self.backbone.patch_embed.img_size
        return int(h), int(w)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(gh, gw)`` at :attr:`input_size`."""
        gh, gw = self.backbone.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def num_prefix_tokens(self) -> int:
        """Class plus register tokens ahead of the patch tokens."""
        return int(self.backbone.num_prefix_tokens)

    @property
    def dynamic_img_size(self) -> bool:
        return bool(getattr(self.backbone, "dynamic_img_size", False))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # -- the API -------------------------------------------------------------------------------

    def preprocess(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 RGB -> ``(B, 3, H, W)`` float32 on the model's device, in [0, 1]
        then normalised with the spec's mean and std."""
        if isinstance(batch, np.ndarray):
            tensor = torch.from_numpy(np.ascontiguousarray(batch))
        elif isinstance(batch, torch.Tensor):
            tensor = batch
        else:
            raise TypeError(f"preprocess expects a numpy array or a tensor, not {type(batch).__name__}")
        if tensor.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 RGB pixels, got {tensor.dtype}")
        if tensor.ndim != 4 or tensor.shape[-1] != 3:
            raise ValueError(f"preprocess expects a (B, H, W, 3) batch, got shape {tuple(tensor.shape)}")
        x = tensor.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - self.mean) / self.std).contiguous()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a float batch (see preprocess), got {x.dtype}")
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.dynamic_img_size:
            p = self.patch_size
            if hw[0] < p or hw[1] < p:
                raise ValueError(f"{self.name}: input {hw} is smaller than one {p}x{p} patch")
        elif hw != self.input_size:
            raise ValueError(f"{self.name} takes {self.input_size[0]}x{self.input_size[1]} inputs, got {hw}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: ``(B, prefix + gh*gw, D)``."""
        self._check_input(x)
        return self.backbone.forward_features(x)

    def embed(
        self, x: torch.Tensor | np.ndarray, tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The pooled ``(B, embed_dim)`` float32 embedding, by the spec's rule.

        ``x`` is a preprocessed float batch, or a uint8 ``(B, H, W, 3)`` batch which is
        preprocessed first. With ``tokens=True`` returns ``(pooled, grid)`` where ``grid`` is
        ``(B, gh, gw, D)`` float32: the patch tokens with class and register tokens removed.
        """
        if isinstance(x, np.ndarray) or x.dtype == torch.uint8:
            x = self.preprocess(x)
        feats = self.forward_features(x)
        cls = feats[:, 0]
        patches = feats[:, self.num_prefix_tokens :]
        pooled = torch.cat((cls, patches.mean(dim=1)), dim=-1) if self.spec.embedding == "cls+mean" else cls
        # a copy: the class token is a view of the whole (B, tokens, D) output, and a caller that
        # keeps one batch's embeddings would keep all of it (0.8 MB a patch for ViT-B at 224 px)
        pooled = pooled.float().clone()
        if not tokens:
            return pooled
        p = self.patch_size
        gh, gw = int(x.shape[-2]) // p, int(x.shape[-1]) // p
        return pooled, patches.reshape(feats.shape[0], gh, gw, feats.shape[-1]).float()

    def forward(
        self, x: torch.Tensor | np.ndarray, tokens: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.embed(x, tokens=tokens)

    def extra_repr(self) -> str:
        tiny = ", tiny" if self.tiny else ""
        return f"name={self.name!r}{tiny}, embed_dim={self.embed_dim}, weights={self.weights.source!r}"
