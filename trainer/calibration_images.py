"""A built-in, deterministic set of calibration images, drawn procedurally from a fixed seed.

Why: the default model is converted on the user's machine at first start, with no network and
maybe no image sets installed, and its similarity tiers (``trainer/tiers.py``) must be the same
wherever it is converted. So the images come from code alone: numpy's seeded generator and Pillow's
drawing (its bundled default font for text), nothing read from disk. Each image mixes a background
(flat colour, linear or radial gradient, stripes, checks, or smoothed noise at one of several
scales, "photo-like" when several octaves are summed) with a few foreground shapes, lines or words,
at sizes 128-384 px and aspect ratios 3:4 to 4:3, so that different images share some low-level
statistics the way real collections do while no two are copies of each other.

:data:`VERSION` names the drawing recipe: bump it when a change alters the images, because the
tiers measured on them (and the default model's cache file name) follow from them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

VERSION = 1
SEED = 20240611
# The default model's calibration: 48 images, 144 embeddings (the originals and two copies of each), 1128
# unrelated pairs; 4-6 s of conversion on a busy 2-core machine. Its tiers were within 0.02 of those of 64 or 128.
COUNT = 48
SOURCE = f"builtin-synthetic-v{VERSION}"

_WORDS = (
    "SALE", "hello", "Lookalike", "42", "photo", "tiger", "blue sky", "menu", "CAFE", "2024",
    "open", "river", "Zebra", "note", "map", "#7", "sunset", "ticket", "Q&A", "draft",
)  # fmt: skip


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int) -> np.ndarray:
    """``[h, w, 3]`` float in [0, 1]: random values on a ``cells``-wide grid, bicubically upsampled."""
    gw, gh = max(2, cells), max(2, round(cells * h / w))
    grid = rng.random((gh, gw, 3)).astype(np.float32)
    chans = [Image.fromarray(grid[..., c], "F").resize((w, h), Image.BICUBIC) for c in range(3)]
    return np.clip(np.stack([np.asarray(c) for c in chans], axis=-1), 0.0, 1.0)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    kind = int(rng.integers(0, 7))
    a, b = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # flat
        arr = np.broadcast_to(a, (h, w, 3))
    elif kind == 1:  # linear gradient at a random angle
        t = np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        arr = a + (b - a) * t[..., None]
    elif kind == 2:  # radial gradient
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        arr = a + (b - a) * (t / max(float(t.max()), 1e-6))[..., None]
    elif kind == 3:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        t = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        arr = np.where((np.floor(t) % 2 == 0)[..., None], a, b)
    elif kind == 4:  # checks
        cell = int(rng.integers(8, 48))
        arr = np.where((((xx // cell) + (yy // cell)) % 2 == 0)[..., None], a, b)
    elif kind == 5:  # smooth noise at one scale: blotches, clouds, fabric
        arr = 255.0 * _smooth_noise(rng, w, h, int(rng.choice([3, 6, 12, 24, 48])))
    else:  # several octaves: a "photo-like" texture with detail at every scale
        total = np.zeros((h, w, 3), np.float32)
        for octave, cells in enumerate((3, 8, 20, 50)):
            total += _smooth_noise(rng, w, h, cells) * 0.55**octave
        total = (total - total.min()) / max(float(np.ptp(total)), 1e-6)
        tint = np.asarray(_colour(rng), np.float32) / 255.0
        arr = 255.0 * (0.35 * total + 0.65 * total * tint)
    return Image.fromarray(np.clip(np.asarray(arr), 0, 255).astype(np.uint8), "RGB")


def _foreground(rng: np.random.Generator, image: Image.Image) -> None:
    draw = ImageDraw.Draw(image)
    w, h = image.size
    for _ in range(int(rng.integers(1, 6))):  # at least one thing on the background
        kind = int(rng.integers(0, 5))
        x0, y0 = rng.uniform(-0.1 * w, 0.9 * w), rng.uniform(-0.1 * h, 0.9 * h)
        x1, y1 = x0 + rng.uniform(0.08, 0.6) * w, y0 + rng.uniform(0.08, 0.6) * h
        fill, outline = _colour(rng), _colour(rng)
        width = int(rng.integers(1, 8))
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=width)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill if rng.random() < 0.7 else None, outline=outline, width=width)
        elif kind == 2:
            points = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(int(rng.integers(3, 7)))]
            draw.polygon(points, fill=fill, outline=outline)
        elif kind == 3:
            for _ in range(int(rng.integers(1, 6))):
                draw.line([(rng.uniform(0, w), rng.uniform(0, h)), (rng.uniform(0, w), rng.uniform(0, h))],
                          fill=_colour(rng), width=int(rng.integers(1, 10)))  # fmt: skip
        else:
            font = ImageFont.load_default(size=int(rng.integers(12, max(13, h // 4))))
            word = _WORDS[int(rng.integers(0, len(_WORDS)))]
            draw.text((float(x0), float(y0)), word, fill=fill, font=font)


def _pink_noise(rng: np.random.Generator, w: int, h: int, alpha: float) -> np.ndarray:
    """``[h, w, 3]`` in [0, 1]: noise with a ``1/f^alpha`` amplitude spectrum (natural images: alpha ~ 1).

    Made at half size (at most 256 px) and upsampled: a quarter of the FFT work; the grain added later
    puts back the finest scale.
    """
    full = (w, h)
    w, h = max(8, min(w // 2, 256)), max(8, min(h // 2, 256))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amplitude = f ** (-alpha)
    amplitude[0, 0] = 0.0
    out = np.empty((h, w, 3), np.float32)
    mix = rng.normal(size=(3, 3)) * 0.5 + np.eye(3)  # correlated channels, as in photos
    phase = rng.uniform(0, 2 * np.pi, size=(3, h, w // 2 + 1))
    chans = [np.fft.irfft2(amplitude * np.exp(1j * phase[c]), s=(h, w)) for c in range(3)]
    stacked = np.einsum("ij,jhw->hwi", mix, np.stack(chans))
    for c in range(3):
        v = stacked[..., c]
        out[..., c] = (v - v.min()) / max(float(np.ptp(v)), 1e-9)
    chans = [Image.fromarray(out[..., c], "F").resize(full, Image.BICUBIC) for c in range(3)]
    return np.clip(np.stack([np.asarray(c) for c in chans], axis=-1), 0.0, 1.0)


def _dead_leaves(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Occluding shapes with power-law sizes (the "dead leaves" model of natural images' statistics),
    some flat-coloured, some filled with 1/f texture, over a 1/f background."""
    texture = Image.fromarray((255 * _pink_noise(rng, w, h, float(rng.uniform(0.8, 1.6)))).astype(np.uint8), "RGB")
    image = texture.copy() if rng.random() < 0.5 else Image.new("RGB", (w, h), _colour(rng))
    palette = [_colour(rng) for _ in range(int(rng.integers(3, 9)))]  # a scene has a few dominant colours
    r_min, r_max = 0.04 * min(w, h), 0.6 * min(w, h)
    for _ in range(int(rng.integers(10, 60))):
        u = rng.random()
        r = (r_min**-1.5 + u * (r_max**-1.5 - r_min**-1.5)) ** (-1 / 1.5)  # density ~ r^-2.5: mostly small
        cx, cy = rng.uniform(-r, w + r), rng.uniform(-r, h + r)
        ry = r * rng.uniform(0.5, 1.5)
        box = (max(0, int(cx - r)), max(0, int(cy - ry)), min(w, int(cx + r) + 1), min(h, int(cy + ry) + 1))
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)  # drawn in the leaf's box only: cheap
        draw = ImageDraw.Draw(mask)
        ox, oy = cx - box[0], cy - box[1]
        if rng.random() < 0.6:
            draw.ellipse((ox - r, oy - ry, ox + r, oy + ry), fill=255)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            draw.polygon([(float(ox + r * np.cos(t)), float(oy + ry * np.sin(t))) for t in angles], fill=255)
        base = palette[int(rng.integers(0, len(palette)))]
        if rng.random() < 0.4:  # textured leaf: the shared texture tinted towards the leaf's colour
            patch = texture.crop(box)
            fill = Image.blend(patch, Image.new("RGB", patch.size, base), float(rng.uniform(0.3, 0.8)))
        else:
            shade = rng.uniform(0.7, 1.2)
            fill = Image.new("RGB", mask.size, tuple(int(min(255, c * shade)) for c in base))  # type: ignore[arg-type]
        image.paste(fill, box[:2], mask)
    return image


def _landscape(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A horizon: a sky gradient above, 1/f-textured ground below, maybe a sun or a few blobs."""
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    sky_top, sky_low = np.asarray(_colour(rng), np.float32), np.asarray(_colour(rng), np.float32)
    sky = sky_top + (sky_low - sky_top) * yy
    ground = _pink_noise(rng, w, h, float(rng.uniform(1.0, 1.8))) * np.asarray(_colour(rng), np.float32)
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.3, 0.7) + 0.1 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 3) + rng.uniform()))
    arr = np.where((yy[..., 0] < horizon)[..., None], sky, 0.3 * sky_low + ground)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.03, 0.15) * min(w, h)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_colour(rng))
    return image


def _graphic(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Shapes, lines and words on a flat, gradient, striped, checked or noisy background (artwork, screenshots)."""
    image = _background(rng, w, h)
    _foreground(rng, image)
    return image


def calibration_image(index: int, seed: int = SEED) -> Image.Image:
    """Image ``index`` of the built-in set: the same pixels for the same (index, seed, Pillow) everywhere."""
    rng = np.random.default_rng([seed, index])
    side = int(rng.integers(192, 513))
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w, h = max(64, round(side * np.sqrt(aspect))), max(64, round(side / np.sqrt(aspect)))
    kind = index % 10  # a fixed mix: half scenes of occluding objects, a fifth horizons, the rest graphics
    if kind < 5:
        image = _dead_leaves(rng, w, h)
    elif kind < 7:
        image = _landscape(rng, w, h)
    else:
        image = _graphic(rng, w, h)
    if kind < 7 and rng.random() < 0.5:  # some soft images, as out-of-focus photos are
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 2.0))))
    if kind < 7 and rng.random() < 0.5:  # sensor-like grain
        noise = rng.normal(0.0, rng.uniform(2, 8), size=(h, w, 1)).astype(np.float32)
        image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")
    return image


def calibration_images(count: int = COUNT, seed: int = SEED) -> list[Image.Image]:
    """The first ``count`` images of the built-in set (RGB)."""
    return [calibration_image(i, seed) for i in range(count)]
