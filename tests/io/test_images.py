import numpy as np
import pytest
from PIL import Image

from smallct import describe, to_rgb_uint8
from smallct.io.images import crop_to_content, MAX_SIDE, preprocess as prepare, resize_rgb


def grey_ramp(h=6, w=8):
    return (np.arange(h * w).reshape(h, w) * 5 % 256).astype(np.uint8)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "1", "CMYK"])
def test_every_pil_mode_gives_rgb_uint8(mode):
    g = grey_ramp()
    base = Image.fromarray(g).convert("RGB")
    if mode == "I;16":
        image = Image.fromarray(g.astype(np.uint16) * 257)
    elif mode == "I":
        image = Image.fromarray(g.astype(np.int32))
    elif mode == "F":
        image = Image.fromarray(g.astype(np.float32))
    else:
        image = base.convert(mode)
    out = to_rgb_uint8(image)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    if mode in ("RGB", "RGBA", "L", "LA", "I;16", "I", "F"):
        np.testing.assert_array_equal(out[:, :, 0], g)
        np.testing.assert_array_equal(out[:, :, 2], g)
    if mode == "1":
        assert set(np.unique(out)) <= {0, 255}


def test_alpha_is_composited_on_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    out = to_rgb_uint8(rgba)
    assert out[0, 0, 0] == 200 and out[0, 1, 0] == 0
    assert out[1, 0, 0] == round(200 * 128 / 255)


def test_float_0_1_is_scaled_like_matplotlib_reads_png(tmp_path, head_ct_dir):
    g = grey_ramp()
    np.testing.assert_array_equal(to_rgb_uint8(g / 255.0)[:, :, 1], g)
    np.testing.assert_array_equal(to_rgb_uint8(g.astype(np.float64))[:, :, 1], g)  # 0..255 floats
    # a real RGBA file read as matplotlib does (float32 0..1, 4 channels) gives the same pixels
    path = head_ct_dir / "190.png"
    as_float = np.asarray(Image.open(path)).astype(np.float32) / 255.0
    assert as_float.shape[2] == 4
    np.testing.assert_array_equal(to_rgb_uint8(as_float), to_rgb_uint8(path))


@pytest.mark.parametrize("dtype,scale", [(np.uint16, 257), (np.int32, 1), (np.int64, 1), (bool, None)])
def test_integer_and_bool_arrays(dtype, scale):
    g = grey_ramp()
    if dtype is bool:
        out = to_rgb_uint8(g > 100)
        np.testing.assert_array_equal(out[:, :, 0], np.where(g > 100, 255, 0))
        return
    out = to_rgb_uint8(g.astype(dtype) * scale)
    np.testing.assert_array_equal(out[:, :, 0], g)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_channel_counts(channels):
    arr = np.full((5, 7, channels), 90, np.uint8)
    if channels in (2, 4):
        arr[..., -1] = 255
    out = to_rgb_uint8(arr)
    assert out.shape == (5, 7, 3) and (out == 90).all()


@pytest.mark.parametrize("bad,message", [
    (np.full((4, 4), np.nan), "NaN"),
    (np.zeros((4, 4, 5), np.uint8), "5 channels"),
    (np.zeros((0, 4), np.uint8), "empty"),
    (np.zeros((4, 4, 4, 4), np.uint8), "4-D"),
    (np.full((4, 4), 3.5, np.float32) * 100, "neither"),
    (np.full((4, 4), -3, np.int16), "negative"),
    (np.zeros((MAX_SIDE + 1, 4), np.uint8), "too large"),
    ("not an image", "expected a path"),
])
def test_bad_inputs_raise_value_error_naming_the_problem(bad, message):
    if isinstance(bad, str):
        bad = object()
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(bad)


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.png"):
        to_rgb_uint8(text)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.png"):
        to_rgb_uint8(cut)
    with pytest.raises(ValueError, match="missing.png"):
        to_rgb_uint8(tmp_path / "missing.png")


def test_real_rgba_files_of_head_ct(head_ct_dir):
    for i in (188, 199):
        path = head_ct_dir / f"{i:03d}.png"
        assert Image.open(path).mode == "RGBA"
        out = to_rgb_uint8(path)
        assert out.dtype == np.uint8 and out.shape[2] == 3
        assert out.max() > 100  # a head, not a black square


def test_crop_and_resize_keep_the_head():
    img = np.zeros((100, 60, 3), np.uint8)
    img[20:80, 10:50] = 200
    cropped = crop_to_content(img, margin=0)
    assert cropped.shape == (60, 40, 3)
    out = resize_rgb(cropped, 32, "pad")
    assert out.shape == (32, 32, 3)
    # padded columns left and right are black, the centre is the head
    assert out[16, 0].max() == 0 and out[16, 16].min() > 150
    assert resize_rgb(cropped, 32, "squash")[16, 0].min() > 150
    assert prepare(img, 16).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="resize mode"):
        resize_rgb(img, 8, "stretch")


def test_describe_shows_modes_sizes_and_labels(head_ct_dir):
    table = describe(head_ct_dir)
    assert len(table) == 200
    assert (table["mode"] == "RGBA").sum() == 12
    assert set(table.loc[table["mode"] == "RGBA", "file"]) == {f"{i}.png" for i in range(188, 200)}
    assert {"file", "label", "mode", "width", "height", "channels", "dtype", "min", "max"} <= set(table.columns)
    assert table["width"].min() >= 134 and table["height"].max() <= 957
    assert table.groupby("label")["width"].median()["1"] > table.groupby("label")["width"].median()["0"]
