"""The generated Pathfinder task: deterministic, balanced, and labelled by connectivity."""
from __future__ import annotations

import numpy as np
import pytest

from vmamba.data.pathfinder import DATASETS, REACH, SPECS, generate_pathfinder, load_pathfinder, marks_connected


@pytest.mark.parametrize("size", [32, 64])
def test_same_seed_same_images_and_prefix_stable(size):
    x1, y1 = generate_pathfinder(8, size, seed=3)
    assert x1.shape == (8, size, size)
    x2, y2 = generate_pathfinder(8, size, seed=3)
    x3, _ = generate_pathfinder(5, size, seed=3)
    x4, _ = generate_pathfinder(5, size, seed=4)
    assert x1.shape == (8, size, size) and x1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(x1[:5], x3)  # image i depends on (seed, i) only
    assert not np.array_equal(x3, x4)


def test_labels_are_balanced():
    _, y = generate_pathfinder(40, 32, seed=0)
    assert sorted(set(y.tolist())) == [0, 1]
    assert (y == 1).sum() == (y == 0).sum() == 20


@pytest.mark.parametrize("size", [32, 64])
def test_label_is_whether_the_marks_are_joined(size):
    """Joined marks are connected along their curve; separate ones never are, even though dash
    gaps are bridged (every curve keeps its distance from the others)."""
    x, y, marks = generate_pathfinder(40 if size == 32 else 16, size, seed=1, return_marks=True)
    for img, label, (a, b) in zip(x, y, marks):
        assert img[tuple(a)] == 255 and img[tuple(b)] == 255  # marks are drawn
        assert marks_connected(img, a, b, reach=REACH * SPECS[size].scale) == bool(label)
    joined = [i for i in range(len(y)) if y[i] == 1]
    dashed = SPECS[size].dash < SPECS[size].length
    # 1-pixel steps join the marks exactly when the curves are solid
    assert all(marks_connected(x[i], *marks[i], reach=1) != dashed for i in joined)


def test_mark_distance_gives_little_away():
    """Both candidate mark pairs of an image are about equally far apart (``match``), so the
    straight-line distance between the marks is no shortcut to the label."""
    _, y, marks = generate_pathfinder(200, 32, seed=3, return_marks=True)
    d = np.hypot(*(marks[:, 0] - marks[:, 1]).T)
    assert abs(d[y == 1].mean() - d[y == 0].mean()) < 1.0
    best = max(max(((d < t) == y).mean(), ((d >= t) == y).mean()) for t in np.unique(d))
    assert best < 0.66  # the best threshold on the distance, fitted on these very images (chance: about 0.57)


def test_classes_do_not_differ_in_ink():
    """Both classes draw the same curves; only which ends are marked differs."""
    x, y = generate_pathfinder(60, 32, seed=2)
    ink = (x > 0).reshape(len(x), -1).sum(1)
    assert abs(ink[y == 1].mean() - ink[y == 0].mean()) < 0.05 * ink.mean()


def test_unknown_size_and_name_are_rejected():
    with pytest.raises(ValueError, match="size 48"):
        generate_pathfinder(2, 48)
    with pytest.raises(ValueError, match="pathfinder16"):
        load_pathfinder("pathfinder16")


@pytest.mark.slow
def test_builtin_dataset_by_name(tmp_path, monkeypatch):
    """'pathfinder32-mini' is a training dataset name like 'fashion-mnist', cached on disk."""
    from vmamba.train import build_dataset

    monkeypatch.setenv("VMAMBA_CACHE", str(tmp_path))
    load_pathfinder.cache_clear()
    train = build_dataset("pathfinder32-mini", "train")
    val = build_dataset("pathfinder32-mini", "val")  # held out of the training images, like fashion-mnist's
    test = build_dataset("pathfinder32-mini", "test")
    size, n_train, n_test = DATASETS["pathfinder32-mini"]
    assert (len(train) + len(val), len(test)) == (n_train, n_test)
    assert len(val) == round(0.1 * n_train)
    assert train.classes == ["separate", "joined"]
    img, label = train[0]
    assert img.size == (size, size) and label in (0, 1)
    assert list(tmp_path.glob("pathfinder/pathfinder32-mini-*.npz"))
    load_pathfinder.cache_clear()
    again = build_dataset("pathfinder32-mini", "train")  # from the cache file: the same images
    np.testing.assert_array_equal(again.base.images, train.base.images)
    assert again.indices == train.indices
