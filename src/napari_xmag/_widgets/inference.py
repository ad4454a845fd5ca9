"""The XMAG inference dock widget: wiring only; the work is in :mod:`napari_xmag.embed` and
:mod:`napari_xmag.maps`.

Pick a slide layer and a model, press *Embed and map*: the slide's tissue patches are embedded
in a background thread (napari progress bar; *Cancel* stops it and keeps what is done for the
next run to resume from) into ``<output folder>/<model>-<weights>/<settings>/<slide>.h5``
(reused when it is already there). With *live maps* (the default) the patch grid, a done mask
and a PCA of the first patches fill in on the canvas while it runs, the batches nearest the
centre of the current view first (:mod:`napari_xmag.live`); then the chosen maps appear on the
slide: PCA colours, k-means segmentation, the tissue mask and
the patch grid, each named kind first (``PCA · slide · random weights``) with its legend in the
dock. Layers made with random weights say so in their names and metadata; that, a K reduced to
the patch count and a missing µm/px also come as napari notifications. A slide that records no
µm/px gets one in *mpp override* (kept in the slide layer's metadata, as the CLI's
``--mpp-override``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from napari_xmag import maps as xmaps
from napari_xmag._paths import user_cache_dir
from napari_xmag._widgets._common import (
    camera,
    in_scroll_area,
    layer_mpp_override,
    mpp_override_edit,
    owned_layers,
    replace_layer,
    shifted,
    slide_info,
    slide_layers,
    slide_offset,
    slide_ready,
    text_label,
)
from napari_xmag._widgets._legend import Legend
from napari_xmag._widgets._task import BackgroundTask, notify
from napari_xmag.embed import EmbedCancelled, EmbedSettings, SlideEmbedding, embed_slide
from napari_xmag.features import read_features
from napari_xmag.live import LiveUpdate, embed_slide_live
from napari_xmag.maps import grid_for_features
from napari_xmag.maps.slide_map import map_name
from napari_xmag.models.precision import PRECISIONS
from napari_xmag.models.registry import list_models
from napari_xmag.provenance import random_weights_warning, tagged_name
from napari_xmag.slide import level0_to_um
from napari_xmag.stain import STAIN_METHODS

if TYPE_CHECKING:
    import napari

#: Metadata key of the layers this widget owns: ``{"role": ..., "slide": path}``.
ROLE = "xmag-inference"
#: The roles of the live layers (replaced by the final maps when the run ends).
LIVE_ROLES = ("live-progress", "live-pca")
MAGNIFICATIONS = ("5x", "20x", "10x", "2.5x", "40x")
DEVICES = ("auto", "cpu", "cuda", "mps")
GRID_COLOUR = "#ffd400"


def default_output_folder() -> Path:
    """``<user cache>/features`` (``XMAG_CACHE_DIR/features`` when that is set)."""
    return user_cache_dir() / "features"


def run_folder(out_dir: str | Path, model: str, weights: str, settings: Any) -> Path:
    """Where one model and settings keep their features: one file per slide, reused on reruns."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"

    tag = (
        f"{settings.mpp:g}um-{settings.patch_size}px-s{settings.stride or settings.patch_size}"
        f"-t{settings.tissue_threshold:g}-{settings.precision}"
        + (f"-{settings.stain_norm}" if settings.stain_norm != "none" else "")
    )
    name = Path(model).name if "/" in model and ":" not in model else model  # a path: its last part
    return Path(out_dir) / f"{safe(name)}-{safe(weights)}" / tag


class InferenceWidget(Container):
    """Dock widget: embed a slide with a model, then show its maps aligned with the slide."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        names = list_models()
        self._slide_edit = ComboBox(label="slide", choices=self._slide_layers)
        self._mpp_override_edit = mpp_override_edit()
        self._model_edit = LineEdit(
            label="model", value="xmag",
            tooltip="a registered model (" + ", ".join(names) + "), a local weights file or model"
            " folder, or hf-hub:ORG/NAME",
        )
        self._model_choices = ComboBox(label="registered", choices=names, value="xmag",
                                       tooltip="pick a registered model to fill in the model field")
        self._weights_edit = ComboBox(
            label="weights", choices=["auto", "random"], value="auto",
            tooltip="auto: the model's own weights (local file or hub); random: untrained, for trying"
            " the plumbing only (the layers say so)",
        )
        self._mpp_edit = ComboBox(label="resolution", choices=MAGNIFICATIONS, value="5x",
                                  tooltip="target magnification of the patches (5x = 2 µm/px)")
        self._stride_edit = SpinBox(
            label="stride (px)", value=224, min=16, max=4096, step=16,
            tooltip="pixels at the target resolution between patches; 112 = half overlap",
        )
        self._threshold_edit = FloatSpinBox(
            label="tissue threshold", value=0.25, min=0.0, max=1.0, step=0.05,
            tooltip="fraction of a patch that must be tissue",
        )
        self._device_edit = ComboBox(label="device", choices=DEVICES, value="auto")
        self._precision_edit = ComboBox(label="precision", choices=PRECISIONS, value="auto",
                                        tooltip="as xmag embed --precision")
        self._stain_edit = ComboBox(label="stain normalisation", choices=STAIN_METHODS, value="none",
                                    tooltip="as xmag embed --stain-norm: fitted once per slide on its tissue,"
                                    " to the bundled H&E reference")
        self._out_edit = FileEdit(label="features folder", mode="d", value=default_output_folder(),
                                  tooltip="features go to <folder>/<model>-<weights>/<settings>/<slide>.h5,"
                                  " reused when already there")
        self._live_edit = CheckBox(text="live maps while embedding", value=True,
                                   tooltip="the patch grid, a done mask and a PCA of the first patches fill"
                                   " in as batches finish, nearest the view's centre first")
        self._pca_edit = CheckBox(text="PCA colours", value=True)
        self._kmeans_edit = CheckBox(text="k-means segmentation", value=True)
        self._k_edit = SpinBox(label="clusters (K)", value=6, min=2, max=20)
        self._mask_edit = CheckBox(text="tissue mask", value=False)
        self._grid_edit = CheckBox(text="patch grid", value=False)
        self._run_button = PushButton(text="Embed and map")
        self._cancel_button = PushButton(text="Cancel")
        buttons = Container(widgets=[self._run_button, self._cancel_button], layout="horizontal",
                            labels=False)
        self._status = text_label()
        self.legend = Legend()
        self._body = in_scroll_area(self, [
            self._slide_edit, self._mpp_override_edit, self._model_edit, self._model_choices,
            self._weights_edit, self._mpp_edit, self._stride_edit, self._threshold_edit,
            self._device_edit, self._precision_edit, self._stain_edit, self._out_edit, self._live_edit,
            self._pca_edit, self._kmeans_edit, self._k_edit, self._mask_edit, self._grid_edit, buttons,
        ], [self._status, self.legend])
        self.task = BackgroundTask(
            "XMAG embedding", [self._run_button], self._status, self._cancel_button,
            cancelled_types=(EmbedCancelled,),
        )
        self._models: dict[tuple[str, str], _LazyModel] = {}
        self._model_choices.changed.connect(self._on_model_picked)
        self._run_button.changed.connect(self._on_run)
        self._slide_edit.changed.connect(self._on_slide_changed)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_slide_changed()

    # ---- choices ------------------------------------------------------------------------
    def _slide_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return slide_layers(self._viewer, ROLE, "xmag_map")

    # ---- handlers -----------------------------------------------------------------------
    def _on_layers_changed(self, _event: Any = None) -> None:
        self._slide_edit.reset_choices()

    def _on_slide_changed(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        if layer is not None:
            self._mpp_override_edit.value = layer_mpp_override(layer)

    def _on_model_picked(self, _event: Any = None) -> None:
        self._model_edit.value = self._model_choices.value

    def _on_run(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        if not slide_ready(layer, float(self._mpp_override_edit.value), self._status):
            return
        path, mpp_override = slide_info(layer)
        try:
            settings = EmbedSettings(
                mpp=self._mpp_edit.value, stride=int(self._stride_edit.value),
                tissue_threshold=float(self._threshold_edit.value), mpp_override=mpp_override,
                device=self._device_edit.value, precision=self._precision_edit.value,
                stain_norm=self._stain_edit.value, workers=2,
            )
        except ValueError as err:
            self._status.value = str(err)
            return
        model, weights = self._model_edit.value.strip(), self._weights_edit.value
        out_dir = run_folder(self._out_edit.value, model, weights, settings)
        wanted = {"pca": self._pca_edit.value, "kmeans": self._kmeans_edit.value,
                  "mask": self._mask_edit.value, "grid": self._grid_edit.value}
        args = (path, self._model(model, weights), out_dir, settings, wanted, int(self._k_edit.value))
        message = f"Embedding {Path(path).name} with {model} ({weights} weights)..."
        def on_done(result: Any) -> None:
            self._on_returned(layer, result)

        if self._live_edit.value:
            self.task.start(_work_live, *args, self._view_centre(layer), message=message, on_done=on_done,
                            on_yield=lambda update: self._on_live(layer, update))
        else:
            self.task.start(_work, *args, message=message, on_done=on_done)

    def _view_centre(self, layer: Any) -> tuple[float, float]:
        """The centre of the current view in the slide's level-0 px (x, y)."""
        y, x = np.asarray(camera(self._viewer).center[-2:], np.float64) - slide_offset(layer)
        mpp_y, mpp_x = (float(v) for v in layer.scale[-2:])
        return (x / mpp_x, y / mpp_y)

    def _on_live(self, layer: Any, update: LiveUpdate) -> None:
        """Draw one live update: the layers' data replaced in place, added the first time."""
        path, _ = slide_info(layer)
        offset = slide_offset(layer)
        for role, smap in zip(LIVE_ROLES, (update.progress, update.pca), strict=True):
            if smap is None:
                continue
            data, kwargs, kind = shifted(smap.layer_data(), offset)  # ends with the slide, as the maps
            existing = owned_layers(self._viewer, ROLE, role, path)
            if existing and existing[0].data.shape == data.shape:
                existing[0].data = data
            else:
                replace_layer(self._viewer, ROLE, role, path, (data, kwargs, kind))
        self._status.value = (f"embedding: {update.done} of {update.total} patches"
                              f" ({update.seconds:.1f} s)")

    def _on_returned(self, layer: Any, result: tuple[Any, list[tuple[str, tuple]], list[str]]) -> None:
        embedding, layers, notes = result
        path, _ = slide_info(layer)
        offset = slide_offset(layer)
        for role in LIVE_ROLES:  # the live layers give way to the final maps
            for done_layer in owned_layers(self._viewer, ROLE, role, path):
                self._viewer.layers.remove(done_layer)
        shown = []
        for role, layer_data in layers:
            shown += replace_layer(self._viewer, ROLE, role, path, shifted(layer_data, offset))
        self.legend.show_layers(shown)
        what = "reused" if embedding.skipped else "embedded"
        self._status.value = "\n".join([f"{what}: {embedding.summary()}", *notes])
        for note in notes:
            notify(note)
        self._viewer.layers.selection.active = layer

    # ---- wiring helpers -----------------------------------------------------------------
    def _model(self, name: str, weights: str) -> Any:
        """A lazy model: built in the worker the first time, then kept for later runs."""
        key = (name, weights)
        if key not in self._models:
            self._models[key] = _LazyModel(name, weights)
        return self._models[key]


class _LazyModel:
    """Builds the model on first use (in the worker thread: loading weights takes a while)."""

    def __init__(self, name: str, weights: str) -> None:
        self.name, self.weights = name, weights
        self._model: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._model is None:
                from napari_xmag.models import create_model  # torch: in the worker, on first use

                self._model = create_model(self.name, weights=self.weights)
            return self._model


def _work(
    path: str, lazy: _LazyModel, out_dir: Path, settings: Any, wanted: dict[str, bool], k: int, *,
    progress: Any, cancel: threading.Event,
) -> tuple[Any, list[tuple[str, tuple]], list[str]]:
    """The worker: embed (or reuse), then make the maps' layer tuples (no napari objects) and the
    notes the user should not miss."""
    model = lazy.get()
    embedding = embed_slide(path, model, out_dir, settings, progress=progress, cancel=cancel)
    return _final_maps(path, embedding, settings, wanted, k)


def _work_live(
    path: str, lazy: _LazyModel, out_dir: Path, settings: Any, wanted: dict[str, bool], k: int,
    near: tuple[float, float], *, progress: Any, cancel: threading.Event,
) -> Generator[LiveUpdate, None, tuple[Any, list[tuple[str, tuple]], list[str]]]:
    """:func:`_work` yielding live maps (at most every 250 ms) while it embeds."""
    model = lazy.get()
    embedding = yield from embed_slide_live(path, model, out_dir, settings, near=near, progress=progress,
                                            cancel=cancel)
    return _final_maps(path, embedding, settings, wanted, k)


def _final_maps(
    path: str, embedding: SlideEmbedding, settings: Any, wanted: dict[str, bool], k: int
) -> tuple[Any, list[tuple[str, tuple]], list[str]]:
    data = read_features(embedding.output)
    notes = []
    if data.attrs.get("weights_random"):
        notes.append(random_weights_warning("these maps").removeprefix("warning: "))
    layers: list[tuple[str, tuple]] = []
    if wanted.get("pca"):
        layers.append(("pca", xmaps.pca_map(embedding.output).layer_data()))
    if wanted.get("kmeans"):
        km = xmaps.kmeans_map(embedding.output, k)
        if km.metadata["clusters"] < k:
            notes.append(f"k-means: K = {km.metadata['clusters']}, not {k}: the slide has only"
                         f" {len(data.coords)} patches")
        layers.append(("kmeans", km.layer_data()))
    if wanted.get("mask"):
        layers.append(("mask", xmaps.tissue_map(path, settings.mpp_override).layer_data()))
    if wanted.get("grid"):
        layers.append(("grid", patch_grid_layer(data)))
    return embedding, layers, notes


def patch_grid_rectangles(coords: np.ndarray, size_level0: float, slide_mpp: float) -> np.ndarray:
    """(N, 2, 2) rectangles (µm, [[y0, x0], [y1, x1]]): patch at level-0 ``x`` spans
    ``(x - 0.5) * mpp .. (x + size - 0.5) * mpp``."""
    xy = np.asarray(coords, np.float64).reshape(-1, 2)
    lo, hi = level0_to_um(xy, slide_mpp), level0_to_um(xy + size_level0, slide_mpp)
    return np.stack([lo[:, ::-1], hi[:, ::-1]], axis=1)


def patch_grid_layer(data: Any) -> tuple[Any, dict[str, Any], str]:
    """The embedded patches as a Shapes tuple of rectangles, edges only, named like the maps."""
    grid = grid_for_features(data)
    rects = patch_grid_rectangles(data.coords, grid.patch_x, grid.slide_mpp)
    name = str(data.coords_attrs.get("name") or Path(str(data.attrs.get("slide_path", ""))).stem)
    random = bool(data.attrs.get("weights_random"))
    kwargs = {
        "name": tagged_name(map_name(f"patch grid ({len(rects)})", name), random),
        "shape_type": "rectangle",
        "edge_color": GRID_COLOUR,
        "face_color": "transparent",
        "edge_width": max(grid.patch_x * grid.slide_mpp / 100, grid.slide_mpp),
        "translate": (0.0, 0.0),
        "units": ("um", "um"),
        "metadata": {"patches": len(rects), "patch_size_level0": grid.patch_x,
                     "weights_random": random},
    }
    return list(rects), kwargs, "shapes"
