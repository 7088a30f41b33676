"""Hostile-input image corpus: made at test time from real photos, never committed as binaries.

Each case is encoded bytes plus what a correct server answers: an ``INVALID_ARGUMENT`` with a
stable reason, or a vector close to that of a reference ("twin") encoded the plain way, e.g.
a 16-bit PNG against its 8-bit twin, an EXIF-rotated JPEG against the upright one.

    python tests/hostile/make_corpus.py OUT_DIR     # writes the files and manifest.json
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REASON_UNDECODABLE = "IMAGE_UNDECODABLE"
REASON_TOO_LARGE = "IMAGE_TOO_LARGE"
REASON_SHAPE = "IMAGE_SHAPE_INVALID"
REASON_MISSING = "IMAGE_MISSING"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'


@dataclass(frozen=True)
class Case:
    """One hostile input: refused with ``reason``, or embedded within ``min_similarity`` of ``twin``."""

    name: str
    data: bytes
    reason: str | None = None
    twin: bytes | None = None
    min_similarity: float = 0.0
    ext: str = "bin"


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def photo(name: str = "chelsea") -> np.ndarray:
    """A real RGB photo from the scikit-image wheel, ``[H, W, 3]`` uint8."""
    import skimage.data

    arr = getattr(skimage.data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid-looking 8-bit gray PNG that claims ``width x height`` but holds a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_header_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A small real JPEG whose frame header is rewritten to claim ``width x height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (90, 120, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def exif_rotated(upright: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels need EXIF ``orientation`` to look like ``upright`` (6: phone held upright)."""
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(upright.transpose(stored[orientation]), "JPEG", quality=92, exif=exif)


def animated_gif(frames: int = 300) -> tuple[bytes, bytes]:
    """A GIF with ``frames`` different frames, and a one-frame GIF of its first frame."""
    base = Image.fromarray(photo("coffee")).resize((160, 107)).quantize(64)
    seq = [base] + [Image.new("P", base.size, i % 64) for i in range(1, frames)]
    for f in seq[1:]:
        f.putpalette(base.getpalette())
    many = encode(seq[0], "GIF", save_all=True, append_images=seq[1:], duration=20, loop=0)
    return many, encode(base, "GIF")


def multipage_tiff(pages: int = 12) -> tuple[bytes, bytes]:
    """A TIFF with ``pages`` pages (first the photo, then other photos), and the first page alone."""
    first = Image.fromarray(photo("astronaut")).resize((256, 256))
    rest = [Image.fromarray(photo(n)).resize((256, 256)) for n in ("rocket", "coffee", "chelsea")] * pages
    return encode(first, "TIFF", save_all=True, append_images=rest[: pages - 1]), encode(first, "TIFF")


def palette_with_transparency() -> tuple[bytes, bytes]:
    """A palette PNG with a transparent index (the background), and its RGB twin on white."""
    arr = photo("rocket")
    img = Image.fromarray(arr).resize((240, 160)).quantize(255)
    p = np.asarray(img).copy()
    p[:, :60] = 255  # the left quarter is transparent
    pal = img.getpalette() or []
    pal = (pal + [0] * 768)[:768]
    pal[765:768] = [0, 0, 0]  # the transparent index hides black, as cut-out product photos often do
    out = Image.fromarray(p, "P")
    out.putpalette(pal)
    rgb = np.asarray(out.convert("RGB")).copy()
    rgb[:, :60] = 255  # what a viewer shows: white behind the transparent part
    return encode(out, "PNG", transparency=255), encode(Image.fromarray(rgb), "PNG")


def build_corpus() -> list[Case]:
    """All cases; small (about a megabyte together), deterministic."""
    rgb = Image.fromarray(photo("chelsea"))
    jpeg = encode(rgb, "JPEG", quality=92)
    png = encode(rgb, "PNG")
    gray8 = np.asarray(rgb.convert("L"))
    gray_png = encode(Image.fromarray(gray8), "PNG")
    gray16 = gray8.astype(np.uint16) * 257
    gray_float = gray8.astype(np.float32) / 255.0
    corrupt_jpeg = bytearray(jpeg)
    corrupt_jpeg[20:600] = np.random.default_rng(0).integers(0, 256, 580, dtype=np.uint8).tobytes()
    corrupt_png = bytearray(png)
    at = png.index(b"IDAT")
    corrupt_png[at + 100 : at + 400] = b"\x00" * 300
    gif_many, gif_first = animated_gif()
    tiff_pages, tiff_first = multipage_tiff()
    pal_png, pal_twin = palette_with_transparency()
    solid = (200, 60, 30)
    upright = Image.fromarray(photo("astronaut")).resize((300, 400))  # portrait, as a phone takes it
    return [
        Case("empty", b"", REASON_MISSING),
        Case("truncated_jpeg", jpeg[: len(jpeg) // 2], REASON_UNDECODABLE, ext="jpg"),
        Case("corrupt_jpeg", bytes(corrupt_jpeg), REASON_UNDECODABLE, ext="jpg"),
        Case("truncated_png", png[: len(png) // 2], REASON_UNDECODABLE, ext="png"),
        Case("corrupt_png", bytes(corrupt_png), REASON_UNDECODABLE, ext="png"),
        Case("png_header_only", png[:33], REASON_UNDECODABLE, ext="png"),
        Case("bomb_png_50000x50000", png_header_bomb(), REASON_TOO_LARGE, ext="png"),
        Case("bomb_jpeg_50000x50000", jpeg_header_bomb(), REASON_TOO_LARGE, ext="jpg"),
        Case("bomb_png_12000x12000", png_header_bomb(12_000, 12_000), REASON_TOO_LARGE, ext="png"),
        Case("bomb_png_9000x9000", png_header_bomb(9000, 9000), REASON_TOO_LARGE, ext="png"),
        Case("thin_1x100000", encode(Image.new("L", (1, 100_000), 128), "PNG"), REASON_SHAPE, ext="png"),
        Case("thin_100000x1", encode(Image.new("L", (100_000, 1), 128), "PNG"), REASON_SHAPE, ext="png"),
        Case("thin_1x10000", encode(Image.new("L", (1, 10_000), 128), "PNG"), REASON_SHAPE, ext="png"),
        Case("svg", SVG, REASON_UNDECODABLE, ext="svg"),
        Case("html", b"<!doctype html><html><body><img src=x></body></html>", REASON_UNDECODABLE, ext="html"),
        Case("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", REASON_UNDECODABLE, ext="pdf"),
        Case("zip", b"PK\x03\x04" + b"\x00" * 60, REASON_UNDECODABLE, ext="zip"),
        Case(
            "random_bytes",
            np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
            REASON_UNDECODABLE,
        ),
        Case("gif_header_only", b"GIF89a\x10\x00\x10\x00", REASON_UNDECODABLE, ext="gif"),
        Case(
            "one_by_one",
            encode(Image.new("RGB", (1, 1), solid), "PNG"),
            twin=encode(Image.new("RGB", (64, 64), solid), "PNG"),
            min_similarity=0.99,
            ext="png",
        ),
        Case(
            "cmyk_jpeg",
            encode(rgb.convert("CMYK"), "JPEG", quality=95),
            twin=encode(rgb, "JPEG", quality=95),
            min_similarity=0.98,
            ext="jpg",
        ),
        Case("gray16_png", encode(Image.fromarray(gray16), "PNG"), twin=gray_png, min_similarity=0.99, ext="png"),
        Case("gray16_tiff", encode(Image.fromarray(gray16), "TIFF"), twin=gray_png, min_similarity=0.99, ext="tif"),
        Case(
            "gray16_big_endian_tiff",
            encode(Image.fromarray(gray16.astype(">u2")), "TIFF"),
            twin=gray_png,
            min_similarity=0.99,
            ext="tif",
        ),
        Case(
            "float32_tiff", encode(Image.fromarray(gray_float), "TIFF"), twin=gray_png, min_similarity=0.99, ext="tif"
        ),
        Case("palette_transparency", pal_png, twin=pal_twin, min_similarity=0.99, ext="png"),
        Case("animated_gif_300_frames", gif_many, twin=gif_first, min_similarity=0.999, ext="gif"),
        Case("multipage_tiff", tiff_pages, twin=tiff_first, min_similarity=0.999, ext="tif"),
        Case(
            "exif_rotated_6",
            exif_rotated(upright, 6),
            twin=encode(upright, "JPEG", quality=92),
            min_similarity=0.98,
            ext="jpg",
        ),
        Case(
            "exif_rotated_8",
            exif_rotated(upright, 8),
            twin=encode(upright, "JPEG", quality=92),
            min_similarity=0.98,
            ext="jpg",
        ),
        Case(
            "exif_rotated_3",
            exif_rotated(upright, 3),
            twin=encode(upright, "JPEG", quality=92),
            min_similarity=0.98,
            ext="jpg",
        ),
    ]


def write_corpus(out: Path) -> list[Path]:
    """Write every case (and twin) under ``out`` with a ``manifest.json``; return the case files."""
    out.mkdir(parents=True, exist_ok=True)
    manifest, paths = [], []
    for case in build_corpus():
        path = out / f"{case.name}.{case.ext}"
        path.write_bytes(case.data)
        paths.append(path)
        entry: dict[str, object] = {"name": case.name, "file": path.name, "reason": case.reason}
        if case.twin is not None:
            twin = out / f"{case.name}.twin.{case.ext}"
            twin.write_bytes(case.twin)
            entry.update(twin=twin.name, min_similarity=case.min_similarity)
        manifest.append(entry)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def read_corpus(out: Path) -> list[Case]:
    """The cases back from a folder written by :func:`write_corpus`."""
    cases = []
    for e in json.loads((out / "manifest.json").read_text()):
        twin = (out / e["twin"]).read_bytes() if e.get("twin") else None
        data = (out / e["file"]).read_bytes()
        cases.append(Case(e["name"], data, e["reason"], twin, float(e.get("min_similarity", 0.0))))
    return cases


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hostile/make_corpus.py OUT_DIR")
    files = write_corpus(Path(sys.argv[1]))
    print(f"wrote {len(files)} cases to {sys.argv[1]}")
