"""Built-in negatives: readable inputs that are not frontal chest films, built offline from what ships with
installed packages. They measure the guard and the film-type check (and teach the latter what is "not a
radiograph"); the guard itself is never fitted on them.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# scikit-image sample images bundled with the package (no download needed).
SKIMAGE_SAMPLES = (
    ("photo", ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "clock", "moon",
               "hubble_deep_field", "retina", "immunohistochemistry", "cell", "microaneurysms")),
    ("texture", ("brick", "grass", "gravel")),
    ("document", ("text", "page")),
    ("synthetic", ("checkerboard", "binary_blobs", "horse", "shepp_logan_phantom", "colorwheel", "logo")),
)
# pydicom's bundled test files that hold a decodable image and are not chest radiographs.
PYDICOM_SAMPLES = (
    ("ct", "CT_small.dcm"), ("ct", "693_J2KI.dcm"), ("ct", "J2K_pixelrep_mismatch.dcm"),
    ("mr", "MR_small.dcm"), ("mr", "examples_overlay.dcm"), ("mr", "MR_small_RLE.dcm"),
    ("nm", "JPEG2000.dcm"), ("us", "examples_rgb_color.dcm"), ("us", "examples_ybr_color.dcm"),
    ("us", "examples_palette.dcm"), ("sc", "SC_rgb_jpeg_dcmd.dcm"), ("sc", "GDCMJ2K_TextGBR.dcm"),
    ("seg", "liver_1frame.dcm"), ("ot", "image_dfl.dcm"),
)


def builtin_negatives(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(category, name, file bytes) of readable inputs that are not frontal chest films.

    Built offline from what ships with installed packages: scikit-image's sample images
    (if installed), pydicom's bundled CT/MR/NM/US/... test files (CT and MR also with Modality
    rewritten to OT, so only the pixels can tell), rendered text, noise, gradients, blank frames.
    Nothing here is used to fit the guard: these only measure it.
    """
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, bytes]] = []
    try:                                               # optional (a dev dependency): its samples when installed
        import skimage.data as sk
    except ImportError:
        sk = None
    if sk is not None:
        for cat, names in SKIMAGE_SAMPLES:
            for name in names:
                try:
                    out.append((cat, f"skimage.{name}", png(getattr(sk, name)())))
                except Exception:                      # noqa: BLE001 - a sample this version lacks
                    continue
    for i, (size, dark) in enumerate(((14, False), (22, False), (30, False), (18, True))):
        out.append(("document", f"rendered_text_{i}", png(text_page(rng, font_size=size, dark=dark))))
    shape = (512, 512)
    blurred = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 8)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    radial = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    out += [
        ("noise", "uniform", png(rng.random(shape))),
        ("noise", "gaussian", png(np.clip(0.5 + 0.15 * rng.standard_normal(shape), 0, 1))),
        ("noise", "salt_and_pepper", png((rng.random(shape) < 0.5).astype(np.float64))),
        ("noise", "blurred", png((blurred - blurred.min()) / np.ptp(blurred))),
        ("blank", "black", png(np.zeros(shape))),
        ("blank", "white", png(np.ones(shape))),
        ("blank", "grey", png(np.full(shape, 0.5))),
        ("synthetic", "gradient", png(np.tile(np.linspace(0, 1, shape[1]), (shape[0], 1)))),
        ("synthetic", "radial_gradient", png(1 - radial / radial.max())),
    ]
    out += pydicom_negatives()
    return out


def png(arr: np.ndarray) -> bytes:
    """PNG bytes of a grey or RGB(A) array (bool, uint8, or float in [0, 1])."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def text_page(rng: np.random.Generator, size: tuple[int, int] = (600, 800), font_size: int = 18,
              dark: bool = False) -> np.ndarray:
    """A page of rendered words (Pillow's default font), black on white or white on black."""
    words = ("patient report chest radiograph findings impression normal lungs clear heart size within "
             "limits no effusion pneumothorax date signature the of and with").split()
    img = Image.new("L", size, 20 if dark else 250)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:                                  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    y = 20
    while y < size[1] - font_size - 10:
        draw.text((20, y), " ".join(rng.choice(words, int(rng.integers(4, 12)))), fill=235 if dark else 10, font=font)
        y += int(font_size * 1.5)
    return np.asarray(img)


def pydicom_negatives() -> list[tuple[str, str, bytes]]:
    """pydicom's bundled non-chest test files; CT and MR also with Modality rewritten to OT."""
    try:                                               # deferred and optional, as in ingest.read
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        return []
    out = []
    for cat, name in PYDICOM_SAMPLES:
        try:
            path = get_testdata_file(name, download=False)
        except TypeError:                              # older pydicom: no download argument
            path = get_testdata_file(name)
        except Exception:                              # noqa: BLE001 - not bundled with this version
            path = None
        if not path:
            continue
        data = Path(path).read_bytes()
        out.append((cat, name, data))
        if cat in ("ct", "mr"):
            try:
                ds = pydicom.dcmread(BytesIO(data))
                ds.Modality = "OT"
                buf = BytesIO()
                ds.save_as(buf)
                out.append((f"{cat}_as_OT", f"{name}[Modality=OT]", buf.getvalue()))
            except Exception:                          # noqa: BLE001 - a file pydicom cannot rewrite
                continue
    return out

