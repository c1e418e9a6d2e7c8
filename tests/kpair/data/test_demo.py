import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from kpair.data import SPLITS, build_demo, count_split, ensure_demo, read_split
from kpair.data import demo as demo_module
from kpair.data.camera import Camera

ROOT = Path(__file__).resolve().parents[3]
SMALL = dict(image_size=16, pairs_per_type=(12, 6, 6))
SIDES = ("left", "right")


def _records(split_dir):
    """(left bytes, right bytes, left domain, right domain, target) per record."""
    files = sorted(str(p) for p in split_dir.glob("*.tfrecord"))
    out = []
    for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
        # Read as the file holds it, not through kpair's own feature spec.
        feature = tf.train.Example.FromString(raw).features.feature
        out.append((
            *(feature[f"{side}/image"].bytes_list.value[0] for side in SIDES),
            *(feature[f"{side}/domain"].int64_list.value[0] for side in SIDES),
            feature["target"].float_list.value[0],
        ))
    return out


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo") / "d", seed=3, **SMALL)


def test_demo_is_deterministic(small_demo, tmp_path):
    again = build_demo(tmp_path / "again", seed=3, **SMALL)
    other = build_demo(tmp_path / "other", seed=4, **SMALL)
    for split in SPLITS:
        shards = sorted(p.name for p in (small_demo / split).glob("*.tfrecord"))
        assert shards
        for name in shards:
            first = (small_demo / split / name).read_bytes()
            assert first == (again / split / name).read_bytes()
            assert first != (other / split / name).read_bytes()


def test_demo_bytes_are_the_same_in_another_process(small_demo, tmp_path):
    """The same seed, the same bytes, whichever process builds it: protobuf's
    map order is not fixed across processes unless asked to be."""
    again = tmp_path / "again"
    code = ("import sys; from kpair.data import build_demo; "
            "build_demo(sys.argv[1], seed=3, image_size=16, pairs_per_type=(12, 6, 6))")
    subprocess.run([sys.executable, "-c", code, str(again)], check=True,
                   cwd=ROOT, capture_output=True, timeout=300)
    for split in SPLITS:
        names = sorted(p.name for p in (small_demo / split).iterdir())
        assert names == sorted(p.name for p in (again / split).iterdir())
        for name in names:
            assert (small_demo / split / name).read_bytes() == (
                again / split / name).read_bytes(), (split, name)


def test_demo_splits_use_disjoint_images(small_demo):
    info = json.loads((small_demo / "demo.json").read_text())
    sets = [set(info["digit_indices"][s][d]) for s in SPLITS for d in ("A", "B")]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 1797
    assert len(info["digit_indices"]["train"]["A"]) > 600
    # The stored images too: no image of one split appears in another.
    images = {
        split: {r[i] for r in _records(small_demo / split) for i in (0, 1)}
        for split in SPLITS
    }
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]


def test_demo_pair_types_and_domains(small_demo):
    for split, n in zip(SPLITS, SMALL["pairs_per_type"]):
        assert count_split(small_demo / split) == {"A-A": n, "B-B": n, "A-B": n}
        domains = {(r[2], r[3]) for r in _records(small_demo / split)}
        # A-B pairs keep the post's layout: left from A, right from B.
        assert domains == {(0, 0), (1, 1), (0, 1)}
    features, y = next(iter(read_split(small_demo / "train", 16).dataset))
    assert features["left"].shape == (16, 16, 3)


@pytest.mark.parametrize("ba_fraction", [0.0, 0.5])
def test_demo_targets_follow_the_rule(tmp_path, monkeypatch, ba_fraction):
    # Render domain B as the inverted domain-A image, so that every stored
    # image maps back to its digit; pairing and targets run unchanged.
    render_a = demo_module._render_a
    monkeypatch.setattr(
        demo_module, "_render_b", lambda mask, photos, rng, camera: 255 - render_a(mask)
    )
    path = build_demo(tmp_path / "d", seed=1, image_size=16, pairs_per_type=(60, 5, 5),
                      ba_fraction=ba_fraction)
    info = json.loads((path / "demo.json").read_text())
    labels = load_digits().target
    masks = demo_module._digit_masks(load_digits().images, 16)
    label_of = {}
    for split in SPLITS:
        for index in info["digit_indices"][split]["A"]:
            label_of[demo_module._png(render_a(masks[index]))] = labels[index]
        for index in info["digit_indices"][split]["B"]:
            label_of[demo_module._png(255 - render_a(masks[index]))] = labels[index]
    records = _records(path / "train")
    orientations = {(r[2], r[3]) for r in records if r[2] != r[3]}
    # B-A pairs (left from B) only when asked for: about half of 60 here.
    assert orientations == ({(0, 1), (1, 0)} if ba_fraction else {(0, 1)})
    for left, right, left_domain, right_domain, target in records:
        assert left_domain in (0, 1) and right_domain in (0, 1)
        # Each image is stored in its own domain, whichever side it is on.
        assert left in label_of and right in label_of
        dl, dr = label_of[left], label_of[right]
        if (left_domain, right_domain) == (0, 0):
            assert target == pytest.approx((dl - dr) / 9.0)
        else:
            assert dl != dr
            assert target == (1.0 if dl > dr else -1.0)


def test_domain_b_is_mnist_m_blend():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 3] = 1.0
    out = demo_module._mnist_m(mask, [photo], np.random.default_rng(5))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    # Where the digit is absent the patch shows through; where it is, the
    # pixel is |patch - 255| = 255 - patch.
    windows = np.lib.stride_tricks.sliding_window_view(photo, (8, 8, 3))[
        ..., 0, :, :, :
    ]
    matches = [
        (i, j)
        for i in range(windows.shape[0])
        for j in range(windows.shape[1])
        if np.array_equal(out[mask == 0], windows[i, j][mask == 0])
    ]
    assert len(matches) == 1
    i, j = matches[0]
    np.testing.assert_array_equal(out[mask == 1], 255 - windows[i, j][mask == 1])


def test_ensure_demo_builds_once_into_kpair_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KPAIR_CACHE", str(tmp_path / "cache"))
    path = ensure_demo(**SMALL)
    assert path.parent == tmp_path / "cache"
    assert path.name.startswith(f"{demo_module.VERSION}-16")
    assert all((path / s / "manifest.json").is_file() for s in SPLITS)

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached demo")

    monkeypatch.setattr(demo_module, "build_demo", fail)
    assert ensure_demo(**SMALL) == path
    assert ensure_demo(cache_dir=tmp_path / "cache", **SMALL) == path


def test_the_cache_is_kpair_cache_then_xdg_cache_home_then_home(tmp_path,
                                                                monkeypatch):
    """`$KPAIR_CACHE` first, then `$XDG_CACHE_HOME/kpair` (when absolute, as
    the XDG Base Directory specification asks), then `~/.cache/kpair`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KPAIR_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_module.default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("KPAIR_CACHE", "")
    assert demo_module.default_cache_dir() == tmp_path / "xdg" / "kpair"
    monkeypatch.delenv("KPAIR_CACHE")
    assert demo_module.default_cache_dir() == tmp_path / "xdg" / "kpair"
    home = tmp_path / "home" / ".cache" / "kpair"
    for ignored in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", ignored)
        assert demo_module.default_cache_dir() == home
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo_module.default_cache_dir() == home


def test_ba_fraction_flips_only_the_orientation(tmp_path):
    """The B-A pairs are the A-B pairs of the default, the other way round."""
    plain = _records(build_demo(tmp_path / "plain", **SMALL) / "train")
    mixed = _records(build_demo(tmp_path / "ba", ba_fraction=0.5, **SMALL) / "train")
    flipped = [(r[1], r[0], r[3], r[2], -r[4]) for r in plain]
    assert len(mixed) == len(plain)
    assert sum(m != p for m, p in zip(mixed, plain)) > 0
    for m, p, f in zip(mixed, plain, flipped):
        assert m in (p, f)


def test_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Received: image_size=4"):
        build_demo(tmp_path / "d", image_size=4)
    with pytest.raises(ValueError, match="Received: pairs_per_type="):
        build_demo(tmp_path / "d", pairs_per_type=(1, 0, 1))
    with pytest.raises(ValueError, match="Received: ba_fraction=1.5"):
        build_demo(tmp_path / "d", ba_fraction=1.5)
    assert not (tmp_path / "d").exists()


def test_domains_differ_in_brightness_and_contrast(tmp_path):
    """The demo's point: per-domain statistics that batch norm cannot share."""
    from kpair.data import read_split

    path = build_demo(tmp_path / "d", **SMALL)
    a, b = [], []
    for features, y in read_split(path / "train", 16).dataset:
        kind = int(y[1])
        if kind == 0:
            a.append(features["left"].numpy())
        elif kind == 1:
            b.append(features["left"].numpy())
    a, b = np.stack(a), np.stack(b)
    assert b.mean() > 3 * a.mean()
    assert b.std() > 2 * a.std()
    # Camera B's warm cast: red well above blue; camera A is gray.
    a_rgb, b_rgb = a.mean(axis=(0, 1, 2)), b.mean(axis=(0, 1, 2))
    assert b_rgb[0] > 1.4 * b_rgb[2]
    np.testing.assert_allclose(a_rgb, a_rgb[0], rtol=1e-6)
    # Sensor noise: neighbouring pixels of B are rarely equal, while A's
    # black background is exactly flat.
    assert (np.diff(b, axis=2) == 0).mean() < 0.1
    assert (np.diff(a, axis=2) == 0).mean() > 0.2


def test_camera_b_casts_exposes_blurs_and_adds_noise():
    camera = demo_module.CAMERA_B
    flat = np.full((32, 32, 3), 100, np.uint8)
    out = camera.look(flat, np.random.default_rng(0)).astype(float)
    expected = 100 * np.asarray(camera.gain) + camera.exposure
    np.testing.assert_allclose(out.mean(axis=(0, 1)), expected, atol=1.0)
    assert 4.0 < out.std(axis=(0, 1)).mean() < 8.0  # its noise, after rounding
    # A sharp edge is softened by the lens blur.
    edge = np.zeros((32, 32, 3), np.uint8)
    edge[:, 16:] = 200
    row = camera.look(edge, np.random.default_rng(0))[:, :, 1].mean(0)
    bright = 200 * camera.gain[1] + camera.exposure
    dark = camera.exposure
    # Both sides of the edge pulled toward each other, around the midpoint.
    assert dark + 0.1 * (bright - dark) < row[15] < row[16]
    assert row[16] < bright - 0.1 * (bright - dark)
    # Without blur or noise, the edge stays sharp and the flat image flat.
    sharp = Camera(gain=(1, 1, 1), exposure=0, blur=0, noise=0)
    assert (sharp.look(edge, np.random.default_rng(0)) == edge).all()


def test_another_camera_changes_domain_b_and_nothing_else(small_demo, tmp_path):
    """`build_demo(camera_b=...)`: the same digits, patches and pairs; only
    domain B's images look different, as the camera says."""
    mild = Camera(gain=(1.0, 1.0, 1.0), exposure=0.0, blur=0.0, noise=0.0)
    other = build_demo(tmp_path / "mild", seed=3, camera_b=mild, **SMALL)
    info = json.loads((other / "demo.json").read_text())
    assert info["camera_b"] == mild.settings()
    assert json.loads((small_demo / "demo.json").read_text())["camera_b"] == (
        demo_module.CAMERA_B.settings())
    decode = lambda b: np.asarray(tf.io.decode_png(b)).astype(float)  # noqa: E731
    b_means = {"demo": [], "mild": []}
    for split in SPLITS:
        ours, theirs = _records(small_demo / split), _records(other / split)
        assert len(ours) == len(theirs)
        for mine, its in zip(ours, theirs):
            assert mine[2:] == its[2:]  # domains and targets
            for side in (0, 1):
                if mine[2 + side] == 0:  # domain A: the same bytes
                    assert mine[side] == its[side]
                else:
                    b_means["demo"].append(decode(mine[side]).mean((0, 1)))
                    b_means["mild"].append(decode(its[side]).mean((0, 1)))
    demo_rgb, mild_rgb = (np.mean(b_means[k], axis=0) for k in ("demo", "mild"))
    # The demo's warm cast (red well above blue) is gone under a neutral camera,
    # and its +50 exposure with it.
    assert demo_rgb[0] > 1.4 * demo_rgb[2]
    assert abs(mild_rgb[0] - mild_rgb[2]) < 0.2 * mild_rgb[2]
    assert mild_rgb[1] < demo_rgb[1] - 30


def test_cli_data_demo_camera_flags(tmp_path, capsys):
    from kpair.cli import main

    for flags, words in (
        (["--camera-b-gain", "1,2"], "--camera-b-gain must be three"),
        (["--camera-b-gain", "1,x,1"], "--camera-b-gain must be three"),
        (["--camera-b-gain", "1,0,1"], "--camera-b-gain must be three"),
        (["--camera-b-noise", "-1"], "--camera-b-noise must be a number"),
        (["--camera-b-exposure", "nan"], "--camera-b-exposure must be a number"),
    ):
        assert main(["data", "demo", "--out", str(tmp_path / "bad"),
                     *flags]) == 2, flags
        assert words in capsys.readouterr().err, flags
        assert not (tmp_path / "bad").exists()
    out = tmp_path / "d"
    assert main(["data", "demo", "--out", str(out), "--image-size", "16",
                 "--camera-b-gain", "1.2,1,0.8", "--camera-b-exposure", "25",
                 "--camera-b-blur", "0", "--camera-b-noise", "3"]) == 0
    info = json.loads((out / "demo.json").read_text())
    assert info["camera_b"] == {"gain": [1.2, 1.0, 0.8], "exposure": 25.0,
                                "blur": 0.0, "noise": 3.0}


def test_ensure_demo_caches_each_camera_apart(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(demo_module, "build_demo",
                        lambda path, **kw: built.append((path, kw)))
    mild = Camera(exposure=25.0)
    ensure_demo(tmp_path, image_size=16, camera_b=mild)
    ensure_demo(tmp_path, image_size=16)
    (mild_path, mild_kw), (plain_path, plain_kw) = built
    assert mild_kw["camera_b"] == mild and plain_kw["camera_b"] == demo_module.CAMERA_B
    assert mild_path != plain_path and mild_path.name.startswith(plain_path.name)


def test_cli_data_demo_ba_fraction(tmp_path, capsys):
    from kpair.cli import main

    assert main(["data", "demo", "--out", str(tmp_path / "bad"),
                 "--ba-fraction", "2"]) == 2
    assert "ba_fraction=2" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "d"
    assert main(["data", "demo", "--out", str(out), "--image-size", "16",
                 "--ba-fraction", "1"]) == 0
    info = json.loads((out / "demo.json").read_text())
    assert info["ba_fraction"] == 1.0
    # Every A-B pair is stored B-A.
    assert {(r[2], r[3]) for r in _records(out / "train")} == {
        (0, 0), (1, 1), (1, 0)}


def test_demo_images_import_to_the_same_records(tmp_path):
    """`kpair data demo --images`: the files a newcomer feeds to `data import`
    and `predict` hold the demo's pairs, pixel for pixel."""
    from kpair.data import import_pairs

    built = build_demo(tmp_path / "d", seed=3, images_dir=tmp_path / "img", **SMALL)
    header = (tmp_path / "img" / "pairs.csv").read_text().splitlines()[0]
    assert header == "left,right,left_domain,right_domain,target,split"
    imported = import_pairs(tmp_path / "img" / "pairs.csv", tmp_path / "img",
                            tmp_path / "imported")
    assert imported
    for split in SPLITS:
        decode = lambda b: np.asarray(tf.io.decode_png(b))  # noqa: E731
        ours = sorted((decode(r[0]).tobytes(), decode(r[1]).tobytes(), *r[2:])
                      for r in _records(built / split))
        theirs = sorted((decode(r[0]).tobytes(), decode(r[1]).tobytes(), *r[2:])
                        for r in _records(tmp_path / "imported" / split))
        assert len(ours) == sum(SMALL["pairs_per_type"][SPLITS.index(split)]
                                for _ in range(3))
        assert ours == theirs
