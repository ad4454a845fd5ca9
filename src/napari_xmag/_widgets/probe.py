"""The XMAG few-shot probe dock widget: wiring only; the work is in :mod:`napari_xmag.fewshot`.

Paint a few regions of each tissue type into a Labels layer (class ids 1, 2, ...), drop
Points with a ``class`` feature, or draw (or open) Shapes: QuPath annotations opened from its
GeoJSON export keep their class names. Press *Train and predict*: a linear probe learns from
the patches under the annotations, in the background, and maps the whole slide (a probability
heatmap per class and a segmentation, with their colour bars and class key in the dock).
*Save probe* / *Load probe* keep it as a ``.npz`` (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from napari.layers import Labels, Points, Shapes

from napari_xmag import fewshot
from napari_xmag._atomic import OutputExistsError
from napari_xmag._widgets import _common
from napari_xmag._widgets._common import (
    features_file_edit,
    fill_features,
    in_scroll_area,
    replace_layer,
    shifted,
    slide_info,
    slide_layers,
    slide_offset,
    text_label,
    user_layers,
)
from napari_xmag._widgets._legend import Legend
from napari_xmag._widgets._task import BackgroundTask, notify
from napari_xmag.provenance import random_weights_warning

if TYPE_CHECKING:
    import napari

#: Metadata key of the layers this widget owns: ``{"role": ..., "slide": path}``.
ROLE = "xmag-probe"
#: µm per pixel of the annotation layer *New annotation layer* adds (fine enough to paint
#: single 5x patches, 448 µm, coarse enough to stay small on a whole slide).
ANNOTATION_UM = 16.0
POINT_CLASS_KEYS = ("class", "label", "class_id")


class ProbeWidget(Container):
    """Dock widget: train a linear probe on a few annotations and map the whole slide."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._slide_edit = ComboBox(label="slide", choices=self._slide_layers)
        self._filled: str | None = None  # the features file we filled in, until the user changes it
        self._features_edit = features_file_edit()
        self._annotations_edit = ComboBox(
            label="annotations", choices=self._annotation_layers,
            tooltip="a Labels layer painted with class ids 1, 2, ..., Points with a 'class' feature, or"
            " Shapes (QuPath annotations from File > Open keep their class names)",
        )
        self._new_button = PushButton(text="New annotation layer")
        self._train_button = PushButton(text="Train and predict")
        self._probe_file_edit = FileEdit(label="probe file", mode="w", filter="*.npz *.skops *.joblib *.pkl",
                                         value=Path("probe.npz"))
        self._trust_edit = CheckBox(
            text="trust pickle files (.joblib/.pkl run code when loaded)", value=False,
            tooltip="only for a pickle you made yourself: loading one runs whatever code it holds",
        )
        self._save_button = PushButton(text="Save probe")
        self._load_button = PushButton(text="Load probe")
        self._status = text_label()
        self.legend = Legend()
        self._body = in_scroll_area(self, [
            self._slide_edit, self._features_edit, self._annotations_edit, self._new_button,
            self._train_button, self._probe_file_edit, self._save_button, self._load_button,
            self._trust_edit,
        ], [self._status, self.legend])
        self.task = BackgroundTask("XMAG few-shot probe", [self._train_button, self._load_button,
                                                           self._save_button], self._status)
        self._probe: Any = None
        self._slide_edit.changed.connect(self._on_slide_changed)
        self._new_button.changed.connect(self._on_new_annotations)
        self._train_button.changed.connect(self._on_train)
        self._save_button.changed.connect(self._on_save)
        self._load_button.changed.connect(self._on_load)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_slide_changed()

    # ---- choices ------------------------------------------------------------------------
    def _slide_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return slide_layers(self._viewer, ROLE, "xmag_map", "xmag-inference")

    def _annotation_layers(self, _widget: Any = None) -> list[tuple[str, Any]]:

        return user_layers(self._viewer, (Labels, Points, Shapes))

    # ---- handlers -----------------------------------------------------------------------
    def _on_layers_changed(self, _event: Any = None) -> None:
        self._slide_edit.reset_choices()
        self._annotations_edit.reset_choices()
        self._on_slide_changed()

    def _on_slide_changed(self, _event: Any = None) -> None:
        # the slide's features, unless the user picked another file (a new layer must not undo that)
        self._filled = fill_features(self._features_edit, self._viewer, self._slide_edit.value,
                                     self._filled)

    def _on_new_annotations(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        if layer is None:
            self._status.value = "Open a slide with napari-xmag first."
            return
        meta = layer.metadata["xmag"]
        width, height = meta["dimensions"]
        mpp_y, mpp_x = (float(s) for s in layer.scale[-2:])
        shape = (int(np.ceil(height * mpp_y / ANNOTATION_UM)), int(np.ceil(width * mpp_x / ANNOTATION_UM)))
        offset = slide_offset(layer) + (0.5 * ANNOTATION_UM - 0.5 * np.array([mpp_y, mpp_x]))
        annotations = self._viewer.add_labels(
            np.zeros(shape, np.uint8), name=f"{layer.name} annotations", scale=(ANNOTATION_UM,) * 2,
            translate=tuple(offset), units=("um", "um"), opacity=0.6,
        )
        annotations.mode = "paint"
        annotations.brush_size = 10
        annotations.selected_label = 1
        self._annotations_edit.value = annotations
        self._status.value = (
            "Paint class 1 on one tissue type, class 2 on another (and so on), then Train and predict."
        )

    def _on_train(self, _event: Any = None) -> None:
        layer, annotations = self._slide_edit.value, self._annotations_edit.value
        if layer is None:
            self._status.value = "Open a slide with napari-xmag first."
            return
        if annotations is None:
            self._status.value = "Add an annotation layer (New annotation layer) and paint a few regions."
            return
        try:
            kwargs = self._annotations(layer, annotations)  # read here: the layer may change later
        except (fewshot.FewShotError, ValueError) as err:
            self._status.value = str(err)
            return
        features = str(self._features_edit.value)

        def work(*, progress: Any, cancel: Any) -> fewshot.FewShotResult:
            return fewshot.fewshot_probe(features, **kwargs)

        self.task.start(work, message=f"Training a probe on {annotations.name}...",
                        on_done=lambda result: self._on_trained(layer, result))

    def _on_trained(self, layer: Any, result: fewshot.FewShotResult) -> None:
        self._probe = result.probe
        self._show(layer, result.heatmaps, result.segmentation)
        self._status.value = result.summary()

    def _on_save(self, _event: Any = None) -> None:
        if self._probe is None:
            self._status.value = "Train a probe first (Train and predict), or load one."
            return
        target = self._probe_file_edit.value
        try:
            try:
                path = fewshot.save_probe(self._probe, target)
            except OutputExistsError as err:
                if not _common.confirm_replace(target, str(err).split(";")[0]):
                    self._status.value = str(err)
                    return
                path = fewshot.save_probe(self._probe, target, overwrite=True)
        except (OSError, ValueError) as err:
            self._status.value = str(err)
            return
        self._status.value = f"Saved the probe to {path}"

    def _on_load(self, _event: Any = None) -> None:
        layer = self._slide_edit.value
        if layer is None:
            self._status.value = "Open a slide with napari-xmag first."
            return
        try:  # the file's checks (no pickle unless trusted) at once; the mapping in the background
            probe = fewshot.load_probe(self._probe_file_edit.value, trust_pickle=self._trust_edit.value)
        except (fewshot.FewShotError, ValueError, OSError) as err:
            self._status.value = str(err)
            return
        features, source = str(self._features_edit.value), self._probe_file_edit.value

        def work(*, progress: Any, cancel: Any) -> tuple[Any, Any]:
            fewshot.load_features(features)  # says how to make a missing one
            return fewshot.predict_maps(features, probe)

        def done(maps: tuple[Any, Any]) -> None:
            heat, seg = maps
            self._probe = probe
            self._show(layer, heat, seg)
            self._status.value = f"Loaded {source}: {len(heat.classes)} classes"

        self.task.start(work, message=f"Mapping the slide with {source}...", on_done=done)

    # ---- wiring helpers -----------------------------------------------------------------
    def _annotations(self, slide_layer: Any, annotations: Any) -> dict[str, Any]:
        """The annotations in the slide's frame (µm, relative to the slide layer)."""
        offset = slide_offset(slide_layer)
        if isinstance(annotations, Labels):
            data = annotations.data[0] if annotations.multiscale else annotations.data
            translate = np.asarray(annotations.translate[-2:], np.float64) - offset
            return {"labels": (np.asarray(data), tuple(annotations.scale[-2:]), tuple(translate))}
        features = annotations.features
        if isinstance(annotations, Shapes):
            return {"shapes": _shape_classes(annotations, offset)}
        key = next((k for k in POINT_CLASS_KEYS if k in features), None)
        if key is None:
            raise fewshot.FewShotError(
                f"{annotations.name}: give the points a 'class' feature (1, 2, ...):"
                " layer.features['class'] = [...]"
            )
        world = np.array([annotations.data_to_world(p) for p in annotations.data])
        world = world.reshape(-1, annotations.ndim)
        return {"points": (world[:, -2:] - offset, np.asarray(features[key]))}

    def _show(self, slide_layer: Any, heat: Any, seg: Any) -> None:
        path, _ = slide_info(slide_layer)
        offset = slide_offset(slide_layer)
        shown = replace_layer(self._viewer, ROLE, "heatmaps", path, shifted(heat.layer_data(), offset))
        shown += replace_layer(self._viewer, ROLE, "segmentation", path, shifted(seg.layer_data(), offset))
        self.legend.show_layers(shown)
        if seg.metadata.get("weights_random"):
            notify(random_weights_warning("the probe's maps").removeprefix("warning: "))
        self._viewer.layers.selection.active = slide_layer


def _shape_classes(shapes: Any, offset: np.ndarray) -> tuple[list[np.ndarray], list[Any]]:
    """Polygons (world µm, slide frame) and their classes: a ``class`` feature (QuPath's names
    when opened from its GeoJSON), else a ``label`` feature, else one class per layer colour."""
    features = shapes.features
    polygons = [np.array([shapes.data_to_world(v) for v in shape])[:, -2:] - offset for shape in shapes.data]
    for key in ("class", *POINT_CLASS_KEYS):
        if key in features and all(str(v) not in ("", "0", "nan") for v in features[key]):
            values = list(features[key])
            return polygons, [int(v) if isinstance(v, (int, np.integer)) else str(v) for v in values]
    raise fewshot.FewShotError(
        f"{shapes.name}: give the shapes a 'class' feature (a name or an id 1, 2, ... per shape), or"
        " open QuPath annotations, which carry their classes"
    )
