"""Grad-CAM (pytorch-grad-cam) on a DenseNet-121 feature block, and an OpenCV overlay.

The target is explicit: the pneumonia logit (never the library's argmax
default, meaningless for a one-logit head). Hooks live only inside a ``with``
block, so the shared model is left exactly as it was.

Which block and method are used is the card's ``explain`` entry, chosen per
model by a faithfulness measure (``pneumo_core.model.cam_eval``) among maps of at
least 8x8: at 128-144 px the last dense block is a 4x4 grid, one blob per film.
Cards without the entry keep Grad-CAM on the last dense block. For an
ensemble the same block of every member is hooked; the library averages their
normalised maps, and the gradient is that of the ensemble's mean logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pneumo_core.ingest.preprocess import to_batch
from pneumo_core.ingest.read import XrayImage
from pneumo_core.model.network import members_of
from pneumo_core.model.predict import Prediction, Predictor

METHODS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam")


def _cam_class(method: str):
    import pytorch_grad_cam as pgc

    classes = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
               "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM}
    if method not in classes:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of {', '.join(METHODS)}.")
    return classes[method]


class PneumoniaLogit:
    """Grad-CAM target: the pneumonia logit itself (sign=+1) or its negation (evidence for NORMAL)."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return self.sign * model_output.reshape(-1)[0]


@dataclass(frozen=True)
class Explanation:
    normalised: np.ndarray      # H x W float32 in [0,1] at the model's input size: relative, per film
    raw: np.ndarray             # h x w float32 >= 0 at feature-map resolution, in the method's own units
    method: str
    target: str                 # what was explained, e.g. "PNEUMONIA logit"
    prediction: Prediction


DEFAULT_LAYER = "denseblock4"        # what cards without an ``explain`` entry were shipped with
LAYERS = ("denseblock3", "transition3", "denseblock4")


def layer_name(card) -> str:
    name = ((card or {}).get("explain") or {}).get("layer") or DEFAULT_LAYER
    if name not in LAYERS:
        raise ValueError(f"Unknown Grad-CAM layer {name!r} in the card; expected one of {', '.join(LAYERS)}.")
    return name


def target_layers(net: torch.nn.Module, name: str = DEFAULT_LAYER) -> list[torch.nn.Module]:
    """The named feature block of each DenseNet in ``net`` (``transition3`` means its conv, before pooling)."""
    out = []
    for member in members_of(net):
        block = getattr(member.features, name)
        out.append(block.conv if name.startswith("transition") else block)
    return out


def default_method(card) -> str:
    return ((card or {}).get("explain") or {}).get("method") or "gradcam"


def explain(predictor: Predictor, image: XrayImage, *, method: str | None = None, target: str = "PNEUMONIA",
            operating_point: str | None = None, layer: str | None = None) -> Explanation:
    """Grad-CAM for one film. ``target`` 'PNEUMONIA' shows evidence for pneumonia, 'NORMAL' against it.
    ``method`` and ``layer`` default to the card's choice (``layer`` overrides it for comparing layers)."""
    method = method or default_method(predictor.card)
    cam_cls = _cam_class(method)
    predictor.threshold(operating_point)                 # an unknown operating point fails before any work
    net = predictor.model.net
    x = to_batch([image.pixels], predictor.card["input"]).to(predictor.model.device).requires_grad_(True)
    targets = [PneumoniaLogit(1.0 if target == "PNEUMONIA" else -1.0)]
    layers = target_layers(net, layer or layer_name(predictor.card))
    with predictor.lock, torch.enable_grad(), cam_cls(model=net, target_layers=layers) as cam:
        normalised = cam(input_tensor=x, targets=targets)[0]
        acts = cam.activations_and_grads.activations
        grads = cam.activations_and_grads.gradients
        # Raw (unnormalised) map of the first member, in the method's own units.
        raw = cam.get_cam_image(x, layers[0], targets, acts[0].numpy(), grads[0].numpy() if grads else None,
                                False)[0]
        logit = float(cam.outputs.detach().float().reshape(-1)[0])    # the map's own forward pass
    prediction = predictor.prediction_from_logit(image, logit, operating_point)
    return Explanation(np.nan_to_num(normalised).astype(np.float32), np.maximum(raw, 0).astype(np.float32),
                       method, f"{target} logit", prediction)


def overlay(pixels: np.ndarray, cam: np.ndarray, *, alpha: float = 0.4, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a [0,1] map over the film at the film's own resolution -> H x W x 3 uint8 RGB."""
    h, w = pixels.shape
    film = cv2.cvtColor((np.clip(pixels, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    heat = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), colormap), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(colour, float(alpha), film, 1.0 - float(alpha), 0.0)


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
