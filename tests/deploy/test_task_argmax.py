"""The task travels config -> checkpoint -> prediction file -> ONNX metadata unchanged, and the
exported `voxel_argmax` is the class `tpvkit predict` writes, for an Occ3D model (whose class 0
"others" is a real class) and for a lidarseg model (whose class 0 "noise" is never predicted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_helpers import randomized_model

from tpvkit.config import load_config, task_of
from tpvkit.engine.checkpoint import build_checkpoint, load_checkpoint_file, save_checkpoint
from tpvkit.task import task_from_dict

pytest.importorskip("onnxruntime")

SMALL = [
    "data.num_workers=0",
    "train.device=cpu",
    "model.encoder.num_hcab=1",
    "model.encoder.num_hab=0",
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "class0"), [("tpv_occ3d_tiny", "others"), ("tpv_tiny", "noise")])
def test_onnx_argmax_is_what_predict_writes(tmp_path, synthetic_infos, name, class0) -> None:
    from tpvkit.data.infos import InfoSet, load_infos
    from tpvkit.deploy import onnx_session
    from tpvkit.deploy.export import deploy
    from tpvkit.deploy.metadata import task_from_onnx
    from tpvkit.engine.inference import inference_loader
    from tpvkit.engine.predict import predict
    from tpvkit.outputs.prediction_file import load_prediction

    cfg = load_config(name, SMALL)
    task = task_of(cfg)
    if task.label_space.free_index is not None:  # the decision-time offset travels too
        offset = [0.0] * cfg.model.num_classes
        offset[task.label_space.free_index] = 0.5
        cfg = load_config(name, [*SMALL, f"model.head.voxel_logit_offset={offset}"])
    model = randomized_model(cfg)
    with torch.no_grad():  # class 0 the best class in a good share of the voxels
        model.head.classifier.bias[0] += 3.0
    ckpt = tmp_path / "model.pth"
    save_checkpoint(build_checkpoint(model=model, cfg=cfg), ckpt)

    # checkpoint
    stored = load_checkpoint_file(ckpt)
    assert stored["config"]["task"] == cfg.task
    assert task_from_dict(stored["task"]) == task

    # prediction file
    info_set = load_infos(synthetic_infos["mini_val"])
    sample = info_set.samples[0]
    (path,) = predict(
        None, ckpt, synthetic_infos["mini_val"], tmp_path / "preds", [sample["token"]], False, False
    )
    pred = load_prediction(path)
    assert pred.task == task
    assert pred.class_names[0] == class0 and pred.default_excluded() == tuple(
        task.label_space.hidden_by_default()
    )

    # ONNX metadata and its argmax on the very inputs predict used
    onnx_path = tmp_path / "model.onnx"
    deploy(ckpt, onnx_path, outputs="argmax")
    assert task_from_onnx(onnx_path) == task
    subset = InfoSet(**{**info_set.__dict__, "samples": [sample]})
    batch = next(iter(inference_loader(cfg, subset, torch.device("cpu"), batch_size=1)))
    inputs = batch["inputs"]  # the graph keeps plain tensors: the projection is its "lidar2img"
    assert inputs.frame == task.input_frame
    feeds = {"img": inputs.img.numpy(), "lidar2img": inputs.projection.numpy()}
    (onnx_cls,) = onnx_session(onnx_path).run(None, feeds)
    onnx_cls = np.asarray(onnx_cls)[0]
    assert onnx_cls.shape == pred.voxels.shape
    agreement = float((onnx_cls == pred.voxels).mean())
    assert agreement > 0.999, agreement  # float noise may flip an exact tie, nothing more
    share0 = float((pred.voxels == 0).mean())
    if task.label_space.ignore_index == 0:
        assert share0 == 0.0 and not (onnx_cls == 0).any()
    else:  # Occ3D: class 0 is predicted by both, as often
        assert share0 > 0.05 and abs(float((onnx_cls == 0).mean()) - share0) < 1e-3
