"""Bad input: one clear error naming the input, and nothing written."""

from pathlib import Path

import pytest

from bench.core.errors import ConfigError, InputError
from bench.core.images import load_images
from bench.run.erase import erase_to_folder


def _erase(tmp_path, **kw):
    args = {"method_spec": "fuchi", "model": str(kw.pop("model")), "concept_name": "cat",
            "images": kw.pop("images"), "out": tmp_path / "out"}
    args.update(kw)
    return erase_to_folder(**args)


def test_unknown_method_suggests(tmp_path, tiny_model_dir, concept_images):
    with pytest.raises(ConfigError, match="unknown method 'fuchy'; did you mean 'fuchi'"):
        _erase(tmp_path, method_spec="fuchy", model=tiny_model_dir, images=concept_images)
    assert not (tmp_path / "out").exists()


def test_empty_image_folder(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match=f"image folder {empty} has no images"):
        _erase(tmp_path, model=tiny_model_dir, images=empty)
    assert not (tmp_path / "out").exists()


def test_corrupt_image(tmp_path, tiny_model_dir, concept_images):
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in Path(concept_images).iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="cannot read image .*zz_broken.png"):
        load_images(bad)
    with pytest.raises(InputError, match="zz_broken.png"):
        _erase(tmp_path, model=tiny_model_dir, images=bad)
    assert not (tmp_path / "out").exists()


def test_missing_image_folder(tmp_path, tiny_model_dir):
    with pytest.raises(InputError, match="image folder not found"):
        _erase(tmp_path, model=tiny_model_dir, images=tmp_path / "nope")


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_concept(tmp_path, tiny_model_dir, concept_images, name):
    with pytest.raises(InputError, match="concept name is empty"):
        _erase(tmp_path, model=tiny_model_dir, images=concept_images, concept_name=name)
    assert not (tmp_path / "out").exists()


def test_missing_model_folder(tmp_path, concept_images):
    with pytest.raises(InputError, match="model folder not found: .*no-such-model"):
        _erase(tmp_path, model=tmp_path / "no-such-model", images=concept_images)
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_pipeline(tmp_path, concept_images):
    with pytest.raises(InputError, match="not a diffusers pipeline folder"):
        _erase(tmp_path, model=concept_images, images=concept_images)
    assert not (tmp_path / "out").exists()


def test_unwritable_output(tmp_path, tiny_model_dir, concept_images):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="cannot be written"):
        _erase(tmp_path, model=tiny_model_dir, images=concept_images, out=blocker / "sub")


def test_bad_config_value(tmp_path, tiny_model_dir, concept_images):
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        _erase(tmp_path, model=tiny_model_dir, images=concept_images, overrides={"epoch": 2})
    assert not (tmp_path / "out").exists()
