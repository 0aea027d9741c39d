"""One icon's files from any original: square PNGs at every size, an ICO, safe names."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.services import icon_files, imaging


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def test_a_wide_jpeg_becomes_square_pngs_centred_on_transparency() -> None:
    files = icon_files.render(encoded(Image.new("RGB", (300, 150), (200, 30, 30)), "JPEG"))

    assert (files.width, files.height) == (300, 150)
    assert sorted(files.pngs) == [16, 32, 64, 128, 256, 512]
    for size, data in files.pngs.items():
        with Image.open(io.BytesIO(data)) as png:
            assert (png.format, png.size, png.mode) == ("PNG", (size, size), "RGBA")
    with Image.open(io.BytesIO(files.pngs[512])) as largest:
        above, centre = largest.getpixel((256, 2)), largest.getpixel((256, 256))
    assert isinstance(above, tuple) and above[3] == 0  # above the picture: transparent
    assert isinstance(centre, tuple)
    red, green, blue, alpha = centre
    assert alpha == 255 and red > 150 and green < 80 and blue < 80
    with Image.open(io.BytesIO(files.ico)) as ico:
        assert set(ico.info["sizes"]) == {(16, 16), (32, 32), (48, 48), (64, 64)}


def test_a_damaged_original_is_refused_as_not_an_image() -> None:
    with pytest.raises(imaging.NotAnImage):
        icon_files.render(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("A Rocket!", "a-rocket"),
        ("  café au lait  ", "cafe-au-lait"),
        ("../../etc/passwd", "etc-passwd"),
        ("火箭", "icon-1"),
        (None, "icon-1"),
        ("x" * 200, "x" * 60),
    ],
)
def test_file_names_are_safe_slugs(text: str | None, name: str) -> None:
    assert icon_files.file_name(text, "icon-1") == name


def test_names_stay_unique_within_an_archive() -> None:
    names = icon_files.Names()
    assert [names.take(n) for n in ("a", "a", "b", "a", "a-2")] == ["a", "a-2", "b", "a-3", "a-2-2"]
