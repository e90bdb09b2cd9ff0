"""TF-Hub backbones: resolution, signature checks, the frozen Keras 3 path, the tf_keras fine-tuning path."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from transferkit.errors import RecipeError
from transferkit.heads import HeadConfig, task_spec
from transferkit.planner import DataProfile, GroupInfo, Similarity, plan_opaque

HANDLE = "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5"


@pytest.fixture(scope="session")
def photos(assets):
    from transferkit.data import decode_image

    return np.stack([decode_image(str(assets / "images" / f"{name}.jpg"), 224)
                     for name in ("cheetah", "elephant")]).astype("float32")


def test_the_hub_path_and_the_h5_registry_path_give_the_same_features(hub_folder, mobilenet_v2_h5, photos):
    import keras

    from transferkit.model import build_model
    from transferkit.hub import frozen_model, load_hub

    hub = load_hub(f"hub:{hub_folder}")
    assert (hub.image_size, hub.features, hub.input_range, hub.source) == (224, 1280, (0.0, 1.0), "local folder")
    _, features = frozen_model(hub, 224, HeadConfig(), task_spec("multiclass", 3))
    transfer = build_model("mobilenet_v2", num_outputs=3, image_size=224, alpha=0.35, weights=str(mobilenet_v2_h5))
    pooled = keras.Model(transfer.model.inputs, transfer.model.get_layer("head_pool").output)
    ours, theirs = features.predict(photos, verbose=0), pooled.predict(photos, verbose=0)
    assert np.max(np.abs(ours - theirs)) <= 1e-4 and np.std(theirs) > 0.1  # same weights, same preprocessing


def test_an_unresolvable_handle_offline_names_the_handle_the_cache_and_the_fix(tmp_path, monkeypatch):
    from transferkit.hub import HubNotFoundError, resolve_hub

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(HubNotFoundError) as error:
        resolve_hub("hub:mobilenet_v2", allow_download=False)
    message = str(error.value)
    cached = tmp_path / "cache" / hashlib.sha1(HANDLE.encode()).hexdigest()
    assert HANDLE in message and str(cached) in message and "hub:/path/to/extracted_folder" in message


def test_a_handle_in_the_hub_cache_resolves_offline(tmp_path, monkeypatch, hub_folder):
    from transferkit.hub import resolve_hub

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    (tmp_path / hashlib.sha1(HANDLE.encode()).hexdigest()).symlink_to(hub_folder)
    handle, folder, source, entry = resolve_hub(f"hub:{HANDLE}", allow_download=False)
    assert (handle, source, entry) == (HANDLE, "hub cache", None) and (folder / "saved_model.pb").is_file()


@pytest.mark.parametrize(
    "backbone, message",
    [
        ("hub:", "hub: needs a handle"),
        ("hub:/no/such/folder", "is not a folder"),
        ("hub:vgg16", "names no Hub handle"),
    ],
)
def test_bad_hub_names_are_explained(backbone, message):
    from transferkit.errors import TransferkitError
    from transferkit.hub import resolve_hub

    with pytest.raises(TransferkitError, match=message):
        resolve_hub(backbone, allow_download=False)


def _export(tmp_path, name, units, pooled=True):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    if pooled:
        x = keras.layers.Dense(units)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, x)
    model.export(str(tmp_path / name), format="tf_saved_model", verbose=False)
    return tmp_path / name


def test_a_saved_model_that_is_not_a_feature_vector_is_refused(tmp_path, hub_folder):
    from transferkit.hub import hub_image_size, load_hub

    with pytest.raises(RecipeError, match="ImageNet classification logits"):
        load_hub(f"hub:{_export(tmp_path, 'logits', 1001)}")
    with pytest.raises(RecipeError, match="pooled feature vector"):
        load_hub(f"hub:{_export(tmp_path, 'map', 0, pooled=False)}")
    hub = load_hub(f"hub:{hub_folder}", input_range="-1,1")
    assert hub.input_range == (-1.0, 1.0) and hub.range_source == "you"
    with pytest.raises(RecipeError, match="takes 224x224 images .* got image_size 96"):
        hub_image_size(hub, 96)


def test_an_opaque_backbone_is_frozen_on_small_data_and_fine_tuned_whole_on_large():
    group = GroupInfo("hub", 400_000)
    unmeasured = Similarity(score=0.0, method="not measurable")
    small = plan_opaque(DataProfile.from_counts([10, 10, 10]), unmeasured, group, backbone="hub:x")
    assert small.frozen == ("hub",) and small.fine_tuned == () and small.fine_tune_epochs == 0
    assert small.quadrant == "small+different" and "one opaque group" in small.explain()
    large = plan_opaque(DataProfile.from_counts([200] * 5), unmeasured, group, learning_rate=1e-3)
    assert large.fine_tuned == ("hub",) and large.group_learning_rates == {"hub": 1e-4} and large.cut is None


def test_the_fine_tuning_path_trains_the_backbone_keeps_batchnorm_and_exports_for_keras3(hub_folder, photos,
                                                                                        tmp_path):
    import tf_keras

    from transferkit.compat import hub_twin
    from transferkit.hub import export_saved_model, load_hub, load_saved_model

    hub = load_hub(f"hub:{hub_folder}")
    model = hub_twin(hub, 224, HeadConfig(), task_spec("multiclass", 2))
    layer = model.get_layer("hub_backbone")
    kernel = next(v for v in layer.variables if "Conv1/kernel" in v.name)
    moving = next(v for v in layer.variables if "moving_mean" in v.name)
    before_kernel, before_moving = kernel.numpy().copy(), moving.numpy().copy()
    model.compile(tf_keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(photos, np.array([0, 1]), epochs=1, verbose=0)
    assert np.max(np.abs(kernel.numpy() - before_kernel)) > 0  # the backbone trains
    np.testing.assert_array_equal(moving.numpy(), before_moving)  # BatchNorm statistics stay ImageNet's
    folder = export_saved_model(model, tmp_path / "saved_model")
    keras3 = load_saved_model(folder, 224)
    np.testing.assert_allclose(keras3.predict(photos, verbose=0), model.predict(photos, verbose=0), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]  # no temporary left behind


def test_finetune_on_a_hub_backbone_saves_a_run_that_predict_and_plain_keras_load(hub_folder, tiny, tmp_path):
    from transferkit import finetune
    from transferkit.data import ImageSet
    from transferkit.predict import load_run

    from PIL import Image

    def grow(batch):
        return np.stack([np.asarray(Image.fromarray(x).resize((224, 224))) for x in batch])

    images = ImageSet(grow(tiny.x_train), tiny.y_train, grow(tiny.x_val), tiny.y_val, tiny.class_names, 224)
    out = tmp_path / "run"
    result = finetune(images, backbone=f"hub:{hub_folder}", epochs=2, fine_tune_epochs=1, plan="none",
                      batch_size=12, output=out, verbose=0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == f"hub:{hub_folder}" and metrics["layer_groups"] == ["hub"]
    assert metrics["hub"]["input_range"] == [0.0, 1.0] and metrics["plan"]["fine_tuned"] == ["hub"]
    assert [s["name"] for s in metrics["stages"]] == ["head", "fine_tune"]
    assert (out / "saved_model" / "saved_model.pb").is_file() and (out / "model.keras").is_file()
    if metrics["stages"][1]["kept"]:
        assert result.trainable_model is not None and "TFSMLayer" in metrics["model_type"]
    model, _ = load_run(out)
    x = images.x_val[:3].astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)
    code = ("import sys; sys.modules['transferkit'] = None\nimport keras, numpy as np\n"
            "try:\n"
            f"    keras.models.load_model({str(out / 'model.keras')!r})\n"
            "except ValueError as error:\n"
            "    print('refused' if 'safe_mode=False' in str(error) else error)\n"
            f"m = keras.models.load_model({str(out / 'model.keras')!r}, safe_mode=False)\n"
            "print(m.predict(np.zeros((1, 224, 224, 3), 'float32'), verbose=0).shape)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["refused", "(1,", "3)"]  # TFSMLayer needs safe_mode=False
    with pytest.raises(Exception, match="opaque to TF-MOT"):
        from transferkit.prune import prune

        prune(out, output=tmp_path / "pruned")
