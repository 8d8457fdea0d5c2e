"""The data layer: every source kind, the safety rules, the cache and the command line, on small files made here."""

import hashlib
import io
import os
import pickle
import re
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jax_resnet_speed import data
from jax_resnet_speed.data import _canonical, _download, _files, _images

REPO = Path(__file__).resolve().parents[1]
CLASSES = data.CIFAR10_CLASSES
TRAIN_PER_BATCH, TEST_COUNT = 20, 30  # tiny: 100 train images in 5 batches, 30 test images

pytestmark = pytest.mark.filterwarnings("ignore:this is not the full CIFAR-10:jax_resnet_speed.data.DataWarning")


# --- making sources -------------------------------------------------------------------------------------------

def fake_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose labels cycle through the classes (the order an image tree is read back in)."""
    images = np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    return images, (np.arange(count) % len(CLASSES)).astype(np.int32)


@pytest.fixture(scope="session")
def cifar():
    train_images, train_labels = fake_split(5 * TRAIN_PER_BATCH, seed=0)
    test_images, test_labels = fake_split(TEST_COUNT, seed=1)
    return train_images, train_labels, test_images, test_labels


def batch_pickle(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch as the official release stores it: bytes keys, channel-planar rows (protocol 2, like Python 2)."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return pickle.dumps({b"batch_label": b"fake batch", b"labels": [int(x) for x in labels], b"data": rows,
                         b"filenames": [b"img_%d.png" % i for i in range(len(images))]}, protocol=2)


def py2_str(text: bytes) -> bytes:
    return b"U" + bytes([len(text)]) + text  # SHORT_BINSTRING: a Python 2 str


def py2_batch_pickle(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch exactly as the official release pickles it: Python 2 str keys, numpy 1.x names (numpy.core)."""
    raw = images.transpose(0, 3, 1, 2).tobytes()
    dtype = (b"cnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R"
             + b"(K\x01J" + struct.pack("<i", len(images)) + b"J" + struct.pack("<i", 3072) + b"\x86" + dtype
             + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([int(label)]) for label in labels) + b"e"
    return b"\x80\x02}(" + py2_str(b"data") + array + py2_str(b"labels") + label_list + b"u."


def write_batches(folder: Path, cifar, overrides: dict[str, bytes] | None = None, python2: bool = False) -> Path:
    train_images, train_labels, test_images, test_labels = cifar
    folder.mkdir(parents=True)
    pickled = py2_batch_pickle if python2 else batch_pickle
    for index in range(5):
        part = slice(index * TRAIN_PER_BATCH, (index + 1) * TRAIN_PER_BATCH)
        (folder / f"data_batch_{index + 1}").write_bytes(pickled(train_images[part], train_labels[part]))
    (folder / "test_batch").write_bytes(pickled(test_images, test_labels))
    meta = {b"label_names": [name.encode() for name in CLASSES], b"num_cases_per_batch": TRAIN_PER_BATCH}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    (folder / "readme.html").write_text("<html>fake</html>")
    for name, content in (overrides or {}).items():
        (folder / name).write_bytes(content)
    return folder


def write_tarball(path: Path, batches_folder: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(batches_folder, arcname="cifar-10-batches-py")
    return path


def write_image_tree(root: Path, cifar, suffix: str = ".png") -> Path:
    train_images, train_labels, test_images, test_labels = cifar
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
        for index, (image, label) in enumerate(zip(images, labels)):
            Image.fromarray(image).save(root / split / CLASSES[label] / f"{index // len(CLASSES):04d}{suffix}")
    return root


def archive_tree(root: Path, path: Path, prefix: str = "") -> Path:
    """Pack an image tree as .zip or tar (compression from the suffix), names under prefix."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for file in files:
                archive.write(file, prefix + file.relative_to(root).as_posix())
    else:
        mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(path, mode) as archive:
            for file in files:
                archive.add(file, prefix + file.relative_to(root).as_posix())
    return path


def png_bytes(size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def assert_same_data(dataset: data.Dataset, cifar) -> None:
    train_images, train_labels, test_images, test_labels = cifar
    np.testing.assert_array_equal(dataset.train_images, train_images)
    np.testing.assert_array_equal(dataset.train_labels, train_labels)
    np.testing.assert_array_equal(dataset.test_images, test_images)
    np.testing.assert_array_equal(dataset.test_labels, test_labels)
    assert dataset.class_names == CLASSES
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    pixels = train_images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(dataset.mean, pixels.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(dataset.std, pixels.std(axis=0), atol=1e-6)
    assert dataset.mean.dtype == dataset.std.dtype == np.float32


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "jax_resnet_speed.data", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


# --- source kinds ---------------------------------------------------------------------------------------------

def test_batches_folder_gives_the_pickled_pixels_in_nhwc(tmp_path, cifar):
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    dataset = data.load_cifar10(folder, tmp_path / "cache")
    assert_same_data(dataset, cifar)
    assert dataset.source_kind == "batches-folder"
    # the download folder that holds cifar-10-batches-py/ works too, with the same content checksum
    assert data.load_cifar10(tmp_path, tmp_path / "cache").checksum == dataset.checksum


@pytest.mark.parametrize("python2", [True, False], ids=["python2-pickles", "python3-pickles"])
def test_official_tarball_matches_its_extracted_folder(tmp_path, cifar, python2):
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar, python2=python2)
    tarball = write_tarball(tmp_path / "cifar-10-python.tar.gz", folder)
    dataset = data.load_cifar10(tarball, tmp_path / "cache")
    assert_same_data(dataset, cifar)
    assert dataset.source_kind == "python-tarball"
    assert dataset.checksum == data.load_cifar10(folder, tmp_path / "cache").checksum


def test_batches_without_meta_use_the_cifar10_names(tmp_path, cifar):
    folder = write_batches(tmp_path / "batches", cifar)
    (folder / "batches.meta").unlink()
    assert data.load_cifar10(folder, tmp_path / "cache").class_names == CLASSES


def test_png_image_folder_is_exact_and_interleaves_classes(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    dataset = data.load_cifar10(root, tmp_path / "cache")
    assert_same_data(dataset, cifar)  # includes the label order 0, 1, ..., 9, 0, 1, ...
    assert dataset.source_kind == "image-folder"


def test_jpeg_image_folder_decodes_like_pillow(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar, suffix=".jpg")
    dataset = data.load_cifar10(root, tmp_path / "cache")
    expected = np.asarray(Image.open(root / "test" / "bird" / "0001.jpg"))
    np.testing.assert_array_equal(dataset.test_images[12], expected)  # 12 = second bird in the interleaved order
    assert dataset.test_labels[12] == CLASSES.index("bird")
    assert np.abs(dataset.train_images.astype(int) - cifar[0]).mean() < 60  # lossy, but the same images


def test_class_names_are_the_sorted_folder_names(tmp_path):
    root = tmp_path / "images"
    for split, count in (("train", 3), ("test", 1)):
        for name in ("zebra", "ant", "mole"):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                (root / split / name / f"{index}.png").write_bytes(png_bytes())
    dataset = data.load_cifar10(root, tmp_path / "cache")
    assert dataset.class_names == ("ant", "mole", "zebra")
    assert dataset.train_labels.tolist() == [0, 1, 2] * 3


@pytest.mark.parametrize("name", ["tree.tar.gz", "tree.tgz", "tree.tar", "tree.zip"])
def test_image_archives_read_in_memory_match_the_folder(tmp_path, cifar, name):
    root = write_image_tree(tmp_path / "images", cifar)
    archive = archive_tree(root, tmp_path / name, prefix="cifar10/")
    before = set(tmp_path.rglob("*"))
    dataset = data.load_cifar10(archive, tmp_path / "cache")
    assert_same_data(dataset, cifar)
    assert dataset.source_kind == "image-archive"
    assert {p for p in tmp_path.rglob("*") if "cache" not in p.parts} == before  # nothing was extracted


def test_archive_with_dot_slash_names_and_hidden_files(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"not an image")
    (root / "README.txt").write_text("not data")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname=".")
    assert_same_data(data.load_cifar10(archive, tmp_path / "cache"), cifar)


def test_npz_source_is_read_directly_without_a_cache(tmp_path, cifar):
    path = tmp_path / "cifar.npz"
    np.savez(path, train_images=cifar[0], train_labels=cifar[1], test_images=cifar[2], test_labels=cifar[3],
             class_names=np.array(CLASSES))
    dataset, cache_file, hit = data._load(path, tmp_path / "cache")
    assert_same_data(dataset, cifar)
    assert (dataset.source_kind, cache_file, hit) == ("npz", None, False)
    assert not (tmp_path / "cache").exists()


def test_npz_with_bad_labels_or_missing_arrays_is_refused(tmp_path, cifar):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=cifar[0], train_labels=cifar[1] + 5, test_images=cifar[2], test_labels=cifar[3],
             class_names=np.array(CLASSES))
    with pytest.raises(data.DataError, match=r"train labels span 5\.\.14, but there are 10 class names"):
        data.load_cifar10(path, tmp_path / "cache")
    np.savez(path, train_images=cifar[0], train_labels=cifar[1])
    with pytest.raises(data.DataError, match="lacks test_images, test_labels, class_names"):
        data.load_cifar10(path, tmp_path / "cache")


def test_files_that_are_not_plain_npz_are_named_for_what_they_are(tmp_path, cifar):
    text = tmp_path / "notes.npz"
    text.write_text("just some text")
    with pytest.raises(data.DataError, match=r"notes.npz is not a .npz file \(a .npz is a zip of .npy arrays"):
        data.load_cifar10(text, tmp_path / "cache")
    objects = tmp_path / "objects.npz"
    np.savez(objects, train_images=np.array([{}], dtype=object), train_labels=cifar[1], test_images=cifar[2],
             test_labels=cifar[3], class_names=np.array(CLASSES))
    with pytest.raises(data.DataError, match="objects.npz holds Python objects .* never unpickled") as refused:
        data.load_cifar10(objects, tmp_path / "cache")
    assert "allow_pickle" not in str(refused.value)  # numpy's advice to load it unsafely is not repeated


def test_npz_with_wrong_image_shape_is_refused(tmp_path, cifar):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=cifar[0][:, :31], train_labels=cifar[1], test_images=cifar[2],
             test_labels=cifar[3], class_names=np.array(CLASSES))
    with pytest.raises(data.DataError, match=r"train images are uint8 \(100, 31, 32, 3\), expected uint8"):
        data.load_cifar10(path, tmp_path / "cache")


# --- tensorflow-datasets --------------------------------------------------------------------------------------

TFDS_EXAMPLES = 120  # per split; tfds's mock draws them at about a millisecond each


@pytest.fixture
def mocked_tfds():
    """The real tensorflow_datasets, its cifar10 builder served by tfds.testing.mock_data: random CIFAR-10-shaped
    examples through tfds.data_source, without a download (and without TensorFlow, which the test extra lacks)."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=TFDS_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
        yield tfds


def test_tfds_source_reads_cifar10_through_tfds_data_source(mocked_tfds):
    train, test = mocked_tfds.data_source("cifar10", split=["train", "test"])
    expected = [(np.stack([example["image"] for example in source]), [int(example["label"]) for example in source])
                for source in (train, test)]
    dataset = data.load_cifar10("tfds:cifar10")
    assert dataset.source_kind == "tfds"
    for (images, labels), split in zip(expected, ("train", "test")):
        np.testing.assert_array_equal(getattr(dataset, f"{split}_images"), images)
        assert getattr(dataset, f"{split}_labels").tolist() == labels
    assert dataset.train_images.shape == (TFDS_EXAMPLES, 32, 32, 3) and dataset.train_labels.dtype == np.int32
    assert dataset.class_names == tuple(train.dataset_info.features["label"].names) and len(dataset.class_names) == 10
    np.testing.assert_allclose(dataset.mean, expected[0][0].reshape(-1, 3).mean(axis=0) / 255, atol=1e-6)
    assert data.load_cifar10("tfds").checksum == dataset.checksum  # the name defaults to cifar10


def test_tfds_unknown_name_is_one_line(mocked_tfds):
    with pytest.raises(data.DataError, match=r"tensorflow-datasets could not load 'no_such_dataset' \(.*\); pass"):
        data.load_cifar10("tfds:no_such_dataset")


def test_tfds_through_the_trainer_and_data_info(mocked_tfds, capsys):
    from jax_resnet_speed import cli
    from jax_resnet_speed.data.__main__ import main as data_main

    args = cli.build_parser().parse_args(["--data", "tfds", "--train-subset", "100", "--test-subset", "50",
                                          "--batch-size", "64"])
    dataset, section = cli.load_run_data(args, cli.resolve_config(args, "cpu"))
    assert (section["data"], section["data_kind"], section["train_images"], section["test_images"]) == \
        ("tfds", "tfds", 100, 50)
    assert section["data_checksum"] == dataset.checksum and dataset.train_images.shape == (100, 32, 32, 3)

    assert data_main(["info", "tfds"]) == 0
    out = capsys.readouterr().out
    full = data.load_cifar10("tfds")
    for line in ("source    tfds", "kind      tfds", f"images    {TFDS_EXAMPLES} train, {TFDS_EXAMPLES} test",
                 "cache     none (this kind of source is read directly)", f"checksum  sha256:{full.checksum}"):
        assert line in out
    counts = np.bincount(full.train_labels, minlength=10)
    assert re.search(rf"^ 0 {re.escape(full.class_names[0])} +{counts[0]} +", out, re.MULTILINE)
    assert "mean      " in out and "std       " in out and "loaded in " in out


def test_tfds_missing_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(data.DataError, match=r'pip install -e "\.\[tfds\]"'):
        data.load_cifar10("tfds")


# --- default source and download ------------------------------------------------------------------------------

def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "jax_resnet_speed"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "jax_resnet_speed"


def test_environment_variable_is_the_default_source(monkeypatch, tmp_path, cifar):
    monkeypatch.setenv(data.ENV_VAR, str(write_image_tree(tmp_path / "images", cifar)))
    assert data.load_cifar10(None, tmp_path / "cache").source_kind == "image-folder"
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match=r"nowhere \(from \$JAX_RESNET_SPEED_DATA\) does not exist; pass"):
        data.load_cifar10(None, tmp_path / "cache")


def test_missing_path_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(data.DataError) as error:
        data.load_cifar10(tmp_path / "nowhere", tmp_path / "cache")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "\n" not in message
    assert all(hint in message for hint in ("--data PATH", "$JAX_RESNET_SPEED_DATA", "--data tfds", ".npz"))


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_offline_download_fails_with_one_line_listing_the_ways(monkeypatch, tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(data.DataError) as error:
        data.load_cifar10(None, tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and "Temporary failure in name resolution" in message
    assert all(hint in message for hint in ("--data PATH", "$JAX_RESNET_SPEED_DATA", "--data tfds"))
    assert list((tmp_path / "cache").iterdir()) == []  # no partial download left behind


def test_download_checks_md5_then_is_reused(monkeypatch, tmp_path, cifar, capsys):
    payload = write_tarball(tmp_path / "served.tar.gz", write_batches(tmp_path / "batches", cifar)).read_bytes()
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(payload))
    with pytest.raises(data.DataError, match="download .* is damaged"):
        data.load_cifar10(None, tmp_path / "cache")  # the served bytes are not the official file
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(_download, "OFFICIAL_MD5", hashlib.md5(payload).hexdigest())
    assert_same_data(data.load_cifar10(None, tmp_path / "cache"), cifar)
    assert capsys.readouterr() == ("", "")  # no progress when stdout is not a terminal
    assert (tmp_path / "cache" / data.OFFICIAL_NAME).read_bytes() == payload
    monkeypatch.setattr(urllib.request, "urlopen", None)  # a second load must not download
    assert data._load(None, tmp_path / "cache")[2]


# --- safety ---------------------------------------------------------------------------------------------------

class RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Evaluates:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def creates_file(payload: type, marker: Path) -> bytes:
    """A batch pickle that, unpickled by pickle.loads, creates marker."""
    command = f"touch {marker}" if payload is RunsCommand else f"open({str(marker)!r}, 'w').close()"
    return pickle.dumps({b"data": payload(command), b"labels": [0]}, protocol=2)


@pytest.mark.parametrize("payload", [RunsCommand, Evaluates])
def test_pickle_that_would_run_code_is_refused_unrun(tmp_path, cifar, payload):
    pickle.loads(creates_file(payload, tmp_path / "proof"))
    assert (tmp_path / "proof").exists()  # the payload is live: a plain unpickler runs it
    marker = tmp_path / "marker"
    folder = write_batches(tmp_path / "batches", cifar, overrides={"data_batch_1": creates_file(payload, marker)})
    refused = "refusing to unpickle .*data_batch_1: it calls (posix.system|__builtin__.eval)"
    with pytest.raises(data.DataError, match=refused):
        data.load_cifar10(folder, tmp_path / "cache")
    tarball = write_tarball(tmp_path / "evil.tar.gz", folder)
    with pytest.raises(data.DataError, match="refusing to unpickle"):
        data.load_cifar10(tarball, tmp_path / "cache")
    assert not marker.exists()


def test_pickle_codecs_other_than_latin1_are_refused(tmp_path, cifar):
    sneaky = b"c_codecs\nencode\n(Vx\nVzlib\ntR."  # protocol 0: _codecs.encode('x', 'zlib')
    folder = write_batches(tmp_path / "batches", cifar, overrides={"test_batch": sneaky})
    with pytest.raises(data.DataError, match="test_batch is not a readable pickle .*'zlib' is not allowed"):
        data.load_cifar10(folder, tmp_path / "cache")


def test_corrupt_pickle_is_reported(tmp_path, cifar):
    good = batch_pickle(*fake_split(5, 0))
    folder = write_batches(tmp_path / "batches", cifar, overrides={"data_batch_3": good[: len(good) // 2]})
    with pytest.raises(data.DataError, match="data_batch_3 is not a readable pickle .* damaged or truncated"):
        data.load_cifar10(folder, tmp_path / "cache")


def tar_with(path: Path, member: tarfile.TarInfo, content: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        ok = tarfile.TarInfo("train/cat/0000.png")
        image = png_bytes()
        ok.size = len(image)
        archive.addfile(ok, io.BytesIO(image))
        member.size = len(content) if member.isfile() else 0
        archive.addfile(member, io.BytesIO(content) if member.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("bad, reason", [
    (member("../escaped.png"), "points outside the archive"),
    (member("train/../../escaped.png"), "points outside the archive"),
    (member("/tmp/jax_resnet_speed_escaped.png"), "points outside the archive"),
    (member("train/cat/link.png", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    (member("train/cat/hard.png", tarfile.LNKTYPE, "train/cat/0000.png"), "is a hard link"),
    (member("train/cat/dev.png", tarfile.CHRTYPE), "is a character device"),
    (member("train/cat/fifo.png", tarfile.FIFOTYPE), "is a fifo"),
])
def test_tar_members_that_could_escape_are_refused(tmp_path, monkeypatch, bad, reason):
    work = tmp_path / "work" / "inner"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    archive = tar_with(tmp_path / "work" / "evil.tar.gz", bad, png_bytes())
    with pytest.raises(data.DataError, match=f"refusing .*evil.tar.gz: member .* {reason}"):
        data.load_cifar10(archive, tmp_path / "cache")
    assert not list(tmp_path.rglob("escaped.png")) and not Path("/tmp/jax_resnet_speed_escaped.png").exists()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("name, mode, reason", [
    ("../escaped.png", 0o100644, "points outside"),
    ("..\\escaped.png", 0o100644, "points outside"),
    ("C:/escaped.png", 0o100644, "points outside"),
    ("train/cat/link.png", stat.S_IFLNK | 0o777, "is a symlink"),
])
def test_zip_members_that_could_escape_are_refused(tmp_path, name, mode, reason):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train/cat/0000.png", png_bytes())
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        archive.writestr(info, png_bytes())
    with pytest.raises(data.DataError, match=f"refusing .*evil.zip: member .* {reason}"):
        data.load_cifar10(path, tmp_path / "cache")
    assert not list(tmp_path.rglob("escaped.png"))


@pytest.mark.parametrize("name", ["tree.tar.gz", "tree.zip"])
def test_members_too_big_for_cifar10_are_refused(tmp_path, cifar, monkeypatch, name):
    archive = archive_tree(write_image_tree(tmp_path / "images", cifar), tmp_path / name)
    monkeypatch.setattr(_files, "_MAX_MEMBER_BYTES", 1000)  # smaller than the PNGs of random noise
    with pytest.raises(data.DataError, match=f"refusing .*{name}: member .* would unpack to [0-9,]+ bytes"):
        data.load_cifar10(archive, tmp_path / "cache")


@pytest.mark.parametrize("name", ["tree.tar.gz", "tree.zip"])
def test_truncated_archive_is_reported(tmp_path, cifar, name):
    archive = archive_tree(write_image_tree(tmp_path / "images", cifar), tmp_path / name)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(data.DataError, match="cannot read .*truncated"):
        data.load_cifar10(archive, tmp_path / "cache")


@pytest.mark.parametrize("name", ["tree.tar.gz", "tree.tar.bz2", "tree.tar.xz"])
def test_an_archive_cut_anywhere_is_called_truncated(tmp_path, cifar, name):
    """Cut at a member boundary, tarfile's own decompression just ends early: the archive would look like
    one with fewer files ("lacks the folder test/..."), so the compressed stream is read to its end marker."""
    tree = write_image_tree(tmp_path / "images", cifar)
    full = tmp_path / name
    with tarfile.open(full, f"w:{name.rsplit('.', 1)[1]}") as archive:
        for file in sorted(p for p in tree.rglob("*") if p.is_file()):
            archive.add(file, file.relative_to(tree).as_posix())
    content = full.read_bytes()
    cut = tmp_path / f"cut-{name}"
    for fraction in (0.3, 0.6, 0.9, 0.99):
        cut.write_bytes(content[: int(len(content) * fraction)])
        with pytest.raises(data.DataError, match=f"cannot read {re.escape(str(cut))}: it is truncated"):
            data.load_cifar10(cut, tmp_path / "cache")
    cut.write_bytes(content[:-4])  # only the gzip trailer's length (or the xz/bz2 end) is missing
    with pytest.raises(data.DataError, match="truncated|corrupt"):
        data.load_cifar10(cut, tmp_path / "cache")
    assert_same_data(data.load_cifar10(full, tmp_path / "cache"), cifar)


def test_not_an_archive_is_reported(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(data.DataError, match="cannot read .*notes.txt as a tar or zip archive"):
        data.load_cifar10(path, tmp_path / "cache")


# --- image checks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (png_bytes((31, 32)), "is a 31x32 RGB image; every image must be 32x32 RGB"),
    (png_bytes(mode="L"), "is a 32x32 L image; every image must be 32x32 RGB"),
    (b"not an image at all", r"is not a readable image \(not JPEG, PNG, BMP, PPM, TIFF, WEBP\); replace or remove it$"),
    (png_bytes()[:60], "(is not a readable image|is a damaged image)"),
])
def test_bad_image_is_named(tmp_path, cifar, content, message):
    root = write_image_tree(tmp_path / "images", cifar)
    (root / "train" / "dog" / "0003.png").write_bytes(content)
    with pytest.raises(data.DataError, match=f"train/dog/0003.png {message}"):
        data.load_cifar10(root, tmp_path / "cache")


def test_missing_class_folder_is_named(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    for file in (root / "test" / "horse").iterdir():
        file.unlink()
    (root / "test" / "horse").rmdir()
    with pytest.raises(data.DataError, match=r"lacks the folder test/horse/"):
        data.load_cifar10(root, tmp_path / "cache")


def test_extra_test_class_is_named(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    (root / "test" / "unicorn").mkdir()
    (root / "test" / "unicorn" / "0.png").write_bytes(png_bytes())
    with pytest.raises(data.DataError, match=r"has test/unicorn/ but no train/unicorn/"):
        data.load_cifar10(root, tmp_path / "cache")


def test_parallel_decoding_matches_and_names_bad_files(tmp_path, cifar, monkeypatch):
    monkeypatch.setattr(_images, "_DECODE_CHUNK", 16)  # 130 images: several chunks, so worker processes decode
    root = write_image_tree(tmp_path / "images", cifar)
    assert_same_data(data.load_cifar10(root, tmp_path / "cache"), cifar)
    (root / "test" / "ship" / "0002.png").write_bytes(png_bytes((32, 33)))
    with pytest.raises(data.DataError, match="test/ship/0002.png is a 32x33 RGB image"):
        data.load_cifar10(root, tmp_path / "cache")


# --- cache ----------------------------------------------------------------------------------------------------

def test_cache_round_trip_gives_the_same_arrays(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    first, cache_file, hit = data._load(root, tmp_path / "cache")
    assert not hit and cache_file.parent == tmp_path / "cache" and cache_file.is_file()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o666 & ~umask  # as any new file, not mkstemp's 0600
    second, same_file, hit = data._load(root, tmp_path / "cache")
    assert hit and same_file == cache_file
    assert_same_data(second, cifar)
    assert (second.checksum, second.source_kind) == (first.checksum, "image-folder")
    np.testing.assert_array_equal(second.mean, first.mean)
    as_npz = data.load_cifar10(cache_file)  # a cache file is itself a valid .npz source
    assert (as_npz.checksum, as_npz.source_kind) == (first.checksum, "npz")


def test_cache_key_follows_the_content(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    _, first, _ = data._load(root, tmp_path / "cache")
    (root / "train" / "cat" / "0000.png").write_bytes(png_bytes())
    dataset, second, hit = data._load(root, tmp_path / "cache")
    assert second != first and not hit
    assert not dataset.train_images[3].any()  # the first cat is now black


def test_folder_digest_is_remembered_until_a_file_changes(tmp_path, cifar, monkeypatch):
    root = write_image_tree(tmp_path / "images", cifar)
    notes = root / "train" / "cat" / ".notes"  # hidden: hashed, never decoded
    notes.write_text("aaaa")
    first = data._load(root, tmp_path / "cache")[1]
    with monkeypatch.context() as patch:
        patch.setattr(_files, "folder_stream", None)  # an unchanged folder is not read again
        assert data._load(root, tmp_path / "cache")[1:] == (first, True)
    before = notes.stat()
    notes.write_text("bbbb")  # same size, and the mtime is put back: only the ctime tells
    os.utime(notes, ns=(before.st_atime_ns, before.st_mtime_ns))
    second, hit = data._load(root, tmp_path / "cache")[1:]
    assert second != first and not hit


def test_damaged_cache_is_rebuilt(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    _, cache_file, _ = data._load(root, tmp_path / "cache")
    good = cache_file.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # inside train_images: the zip still loads, the checksum catches it
    for damaged in (good[: len(good) // 2], bytes(flipped), b""):
        cache_file.write_bytes(damaged)
        with pytest.warns(data.DataWarning, match="rebuilding the damaged cache"):
            dataset, _, hit = data._load(root, tmp_path / "cache")
        assert not hit
        assert_same_data(dataset, cifar)
        assert cache_file.read_bytes() == good
        assert data._load(root, tmp_path / "cache")[2]


def test_interrupted_cache_write_leaves_no_cache(tmp_path, cifar, monkeypatch):
    root = write_image_tree(tmp_path / "images", cifar)
    cache = tmp_path / "cache"

    def interrupted(file, **arrays):
        file.write(b"PK\x03\x04 half of a zip")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", interrupted)
        with pytest.raises(KeyboardInterrupt):
            data.load_cifar10(root, cache)
    assert [path.name for path in cache.iterdir() if path.is_file()] == []  # no cache, no temp file
    # a process killed mid-write leaves only a temp file, which is never taken for the cache
    cache_file = data._load(root, cache)[1]
    cache_file.unlink()
    (cache / f".{cache_file.name}.abc123.tmp").write_bytes(b"PK\x03\x04 half of a zip")
    dataset, _, hit = data._load(root, cache)
    assert not hit and cache_file.is_file()
    assert_same_data(dataset, cifar)


def test_unwritable_cache_warns_and_still_loads(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(data.DataWarning, match="cannot write the cache"):
        assert_same_data(data.load_cifar10(root, blocker / "cache"), cifar)


def test_counts_other_than_cifar10_warn_but_load(tmp_path, cifar):
    root = write_image_tree(tmp_path / "images", cifar)
    with pytest.warns(data.DataWarning, match=r"not the full CIFAR-10.*100 train \(10-10 per class\); 30 test"):
        data.load_cifar10(root, tmp_path / "cache")


def test_full_cifar10_counts_do_not_warn(recwarn):
    labels = np.arange(60000, dtype=np.int32) % 10
    full = data.Dataset(np.empty(0), labels[:50000], np.empty(0), labels[50000:], CLASSES, np.zeros(3),
                        np.ones(3), "npz", "")
    _canonical.warn_unusual_counts(full)
    assert not recwarn.list


def test_data_module_does_not_import_jax():
    code = "import sys, jax_resnet_speed.data; print('jax' in sys.modules, 'PIL' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.split() == ["False", "False"]


# --- command line ---------------------------------------------------------------------------------------------

def test_cli_info_and_prepare(tmp_path, cifar):
    tarball = write_tarball(tmp_path / "cifar-10-python.tar.gz", write_batches(tmp_path / "batches", cifar))
    cache = tmp_path / "cache"
    prepared = run_cli("prepare", str(tarball), "--cache-dir", str(cache))
    assert prepared.returncode == 0, prepared.stderr
    cache_file = next(cache.glob("cifar10-*.npz"))
    assert f"cached 100 train and 30 test images (python-tarball) in {cache_file} (written now)" in prepared.stdout
    assert "warning: this is not the full CIFAR-10" in prepared.stderr
    assert "already cached" in run_cli("prepare", str(tarball), "--cache-dir", str(cache)).stdout
    info = run_cli("info", str(tarball), "--cache-dir", str(cache))
    assert info.returncode == 0, info.stderr
    checksum = data.load_cifar10(tarball, cache).checksum
    for line in ("kind      python-tarball", "images    100 train, 30 test",
                 f"cache     {cache_file} (loaded from it)",
                 f"checksum  sha256:{checksum} (of the decoded arrays, not of the source file)"):
        assert line in info.stdout
    assert re.search(r"^ 3 cat +10 +3$", info.stdout, re.MULTILINE)
    mean = " ".join(f"{value:.4f}" for value in cifar[0].reshape(-1, 3).mean(axis=0) / 255)
    assert f"mean      {mean}" in info.stdout


def test_cli_prepare_on_npz_says_there_is_nothing_to_do(tmp_path, cifar):
    path = tmp_path / "cifar.npz"
    np.savez(path, train_images=cifar[0], train_labels=cifar[1], test_images=cifar[2], test_labels=cifar[3],
             class_names=np.array(CLASSES))
    result = run_cli("prepare", str(path), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0 and "nothing to prepare" in result.stdout


def cli_error_cases(tmp_path: Path, cifar) -> dict[str, tuple[Path, str]]:
    truncated = archive_tree(write_image_tree(tmp_path / "images", cifar), tmp_path / "tree.tar.gz")
    truncated.write_bytes(truncated.read_bytes()[:5000])
    evil = pickle.dumps(RunsCommand(f"touch {tmp_path / 'marker'}"), protocol=2)
    bad_image = write_image_tree(tmp_path / "bad_images", cifar)
    (bad_image / "train" / "frog" / "0001.png").write_bytes(png_bytes((31, 32)))
    return {
        "missing": (tmp_path / "nowhere", "does not exist; pass --data PATH"),
        "truncated": (truncated, "cannot read"),
        "corrupt pickle": (write_batches(tmp_path / "corrupt", cifar, {"test_batch": b"\x80\x02garbage"}),
                           "test_batch is not a readable pickle"),
        "refused pickle": (write_batches(tmp_path / "evil", cifar, {"data_batch_2": evil}),
                           "refusing to unpickle"),
        "bad image": (bad_image, "train/frog/0001.png is a 31x32 RGB image"),
        "refused member": (tar_with(tmp_path / "escape.tar.gz", member("../escaped.png"), png_bytes()),
                           "points outside the archive"),
    }


def test_cli_failures_are_one_line_without_traceback(tmp_path, cifar):
    for case, (source, expected) in cli_error_cases(tmp_path, cifar).items():
        for command in ("info", "prepare"):
            result = run_cli(command, str(source), "--cache-dir", str(tmp_path / "cache"))
            assert result.returncode == 1, (case, result.stderr)
            assert result.stderr.startswith("error: ") and expected in result.stderr, (case, result.stderr)
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, (case, result.stderr)
            assert result.stdout == ""
    assert not (tmp_path / "marker").exists()


# --- the shipped data -----------------------------------------------------------------------------------------

SHIPPED = Path(os.environ.get("JAX_RESNET_SPEED_TEST_DATA")
               or Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg-q75.tar.gz")


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"the shipped CIFAR-10 JPEG archive is not at {SHIPPED} "
                    "(set JAX_RESNET_SPEED_TEST_DATA to its path)")
def test_shipped_jpeg_archive(tmp_path, recwarn):
    start = time.perf_counter()
    dataset = data.load_cifar10(SHIPPED, tmp_path)
    decoded = time.perf_counter() - start
    assert dataset.source_kind == "image-archive" and dataset.class_names == CLASSES
    assert dataset.train_images.shape == (50000, 32, 32, 3) and dataset.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(dataset.train_labels).tolist() == [5000] * 10
    assert np.bincount(dataset.test_labels).tolist() == [1000] * 10
    np.testing.assert_allclose(dataset.mean, (0.4914, 0.4822, 0.4465), atol=0.005)
    assert dataset.train_labels[:10].tolist() == list(range(10))  # interleaved: subsets stay balanced
    assert not [w for w in recwarn.list if issubclass(w.category, data.DataWarning)]
    start = time.perf_counter()
    cached, _, hit = data._load(SHIPPED, tmp_path)
    seconds = time.perf_counter() - start
    assert hit and cached.checksum == dataset.checksum
    print(f"\nshipped archive: decoded in {decoded:.2f} s, cached load {seconds:.2f} s")


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"the shipped CIFAR-10 JPEG archive is not at {SHIPPED}")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to see the decode start")
def test_ctrl_c_during_the_first_decode_is_one_line_and_caches_nothing(tmp_path):
    """SIGINT to the main process only (the decode workers ignore it and must not print when their pipe
    closes) at several points of the ~5 s decode of the shipped archive, counted from the start of the
    decode (its worker processes exist), so that a loaded machine's slow start does not shift them."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    interrupted = 0
    for delay in (0.0, 1.0, 2.5):
        cache = tmp_path / f"cache-{delay}"
        command = [sys.executable, "-m", "jax_resnet_speed.data", "prepare", str(SHIPPED), "--cache-dir", str(cache)]
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline and not children.read_text().strip():
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        if process.returncode == 0:  # the decode won the race: then the cache is whole
            assert "cached 50,000 train" in stdout
            continue
        assert process.returncode == 130, (delay, stderr)
        assert stderr == "interrupted: nothing was cached (the cache is written only when complete)\n", (delay, stderr)
        assert not list(cache.glob("cifar10-*")) and not list(cache.glob(".*.tmp"))
        interrupted += 1
    assert interrupted >= 2  # the decode takes seconds: the first two interrupts land inside it
