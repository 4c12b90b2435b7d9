"""Property-based tests: malformed config overrides, YAML config files and info-file records
always end in a TpvkitError with a message, never in another exception."""

from __future__ import annotations

import copy
import json
import pickle
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpvkit.config import Config, all_keys, apply_overrides, load_config
from tpvkit.constants import CAMERA_ORDER
from tpvkit.data.infos import INFO_FORMAT, load_infos
from tpvkit.errors import TpvkitError

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,  # no .hypothesis folder in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
KEYS = all_keys()
SECTIONS = sorted({k.split(".")[0] for k in KEYS} | {"model.encoder", "model.backbone"})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=4),
    ),
    max_leaves=12,
)
# Keys that exist (so that the value is what is wrong), their prefixes, and random text.
key_texts = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(SECTIONS),
    st.builds(lambda k, tail: f"{k}.{tail}", st.sampled_from(KEYS), st.text(max_size=5)),
    st.text(max_size=20),
)
value_texts = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="[]{}:,-!&*|>'\"#%@` 0123456789.e", max_size=20),
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)
overrides = st.one_of(
    st.text(max_size=40),  # often no '=' at all
    st.builds(lambda k, v: f"{k}={v}", key_texts, value_texts),
)


def _ends_in_a_tpvkit_error(call) -> None:
    try:
        call()
    except TpvkitError as err:
        assert str(err).strip(), "a TpvkitError without a message"


@SETTINGS
@given(st.lists(overrides, min_size=1, max_size=4))
def test_malformed_overrides_end_in_a_tpvkit_error(items):
    _ends_in_a_tpvkit_error(lambda: apply_overrides(Config(), items))


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), values, min_size=1, max_size=3))
def test_override_values_of_every_type_end_in_a_tpvkit_error(mapping):
    _ends_in_a_tpvkit_error(lambda: apply_overrides(Config(), mapping))


def _nested(flat: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            node = child if isinstance(child, dict) else {}
        node[leaf] = value
    return out


yaml_documents = st.one_of(
    st.text(max_size=200),  # random text: often not YAML, or YAML that is not a mapping
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    values.map(lambda v: yaml.safe_dump(v)),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=4).map(
        lambda d: yaml.safe_dump(_nested(d))
    ),
    st.builds(
        lambda base, body: yaml.safe_dump({"_base_": base, **body}),
        st.one_of(st.sampled_from(["tpv_tiny", "no_such_config", "x.yaml", ""]), values),
        st.dictionaries(st.sampled_from(SECTIONS), values, max_size=2),
    ),
)


@SETTINGS
@given(yaml_documents, st.booleans())
def test_malformed_yaml_files_end_in_a_tpvkit_error(tmp_path, text, as_bytes):
    path = tmp_path / "cfg.yaml"
    if as_bytes:
        path.write_bytes(text.encode("utf-8", "surrogatepass")[:200] + b"\xff\xfe")
    else:
        path.write_text(text, encoding="utf-8")
    _ends_in_a_tpvkit_error(lambda: load_config(path))


def test_yaml_that_includes_itself_or_nests_deeply_is_a_tpvkit_error(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("_base_: loop.yaml\n")
    with pytest.raises(TpvkitError, match="includes itself"):
        load_config(path)
    path.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(TpvkitError):
        load_config(path)
    path.write_text("model: &a {backbone: *a}\n")
    with pytest.raises(TpvkitError):
        load_config(path)


@pytest.mark.parametrize(
    "text",
    [
        "1: 2\n",  # a key that is not a string
        "_base_: [tpv_tiny]\n",  # a _base_ that is not a name
        "model: {encoder: {num_heads: 0}}\n",  # would divide by zero in the checks
        "data: {img_size: [0, 10]}\n",
    ],
)
def test_cases_the_properties_found_are_tpvkit_errors(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(TpvkitError):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# Info files


def _valid_sample(i: int) -> dict[str, object]:
    eye3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    cam = {
        "img_path": f"samples/CAM/{i}.jpg",
        "width": 8,
        "height": 4,
        "cam_intrinsic": eye3,
        "sensor2lidar_rotation": eye3,
        "sensor2lidar_translation": [0.0, 0.0, 0.0],
        "lidar2img": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]],
    }
    return {
        "token": f"t{i}",
        "lidar_token": f"l{i}",
        "lidar_path": f"samples/LIDAR_TOP/{i}.pcd.bin",
        "lidarseg_path": f"lidarseg/{i}.bin",
        "lidar2ego_translation": [0.0, 0.0, 1.8],
        "lidar2ego_rotation": [1.0, 0.0, 0.0, 0.0],
        "cams": {name: copy.deepcopy(cam) for name in CAMERA_ORDER},
    }


def _document(samples: list[object]) -> dict[str, object]:
    return {
        "format": INFO_FORMAT,
        "format_version": 1,
        "source": {"dataroot": "nowhere", "version": "v1.0-mini", "split": "mini_val"},
        "samples": samples,
    }


def _paths(record: object, prefix: tuple = ()) -> list[tuple]:
    """Every (nested) key/index path of a JSON-like record."""
    out = [prefix] if prefix else []
    if isinstance(record, dict):
        for k, v in record.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(record, list):
        for i, v in enumerate(record):
            out += _paths(v, (*prefix, i))
    return out


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(string.printable, max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)  # fmt: skip


@st.composite
def broken_documents(draw):
    doc = _document([_valid_sample(0), _valid_sample(1)])
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]  # a missing key
        else:
            parent[path[-1]] = draw(json_values)  # a wrong type or shape
    return doc


@SETTINGS
@given(broken_documents(), st.booleans())
def test_malformed_info_records_end_in_a_tpvkit_error(tmp_path, doc, check_files):
    path = tmp_path / "infos.json"
    path.write_text(json.dumps(doc))
    _ends_in_a_tpvkit_error(lambda: load_infos(path, check_files=check_files))
    # and what loaded can be used: every file the records name can be listed
    try:
        info = load_infos(path, check_files=False)
    except TpvkitError:
        return
    from tpvkit.data.infos import sample_files

    for sample in info.samples:
        assert all(isinstance(f, str) for f in sample_files(sample))


@SETTINGS
@given(st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode())))
def test_random_info_files_end_in_a_tpvkit_error(tmp_path, data):
    path = tmp_path / "infos.json"
    path.write_bytes(data)
    _ends_in_a_tpvkit_error(lambda: load_infos(path))


@SETTINGS
@given(st.one_of(st.binary(max_size=100), json_values.map(pickle.dumps)))
def test_random_legacy_pickles_end_in_a_tpvkit_error(tmp_path, data):
    path = tmp_path / "infos.pkl"
    path.write_bytes(data)
    _ends_in_a_tpvkit_error(lambda: load_infos(path))


def test_the_unbroken_document_loads(tmp_path):
    """The mutation strategy starts from a record the checker accepts."""
    path = tmp_path / "infos.json"
    path.write_text(json.dumps(_document([_valid_sample(0), _valid_sample(1)])))
    assert len(load_infos(path, check_files=False)) == 2


legacy_layouts = st.one_of(
    st.fixed_dictionaries({"infos": json_values, "metadata": json_values}),
    st.fixed_dictionaries({"metainfo": json_values, "data_list": json_values}),
    st.fixed_dictionaries(
        {"infos": st.lists(st.dictionaries(st.sampled_from(
            ["token", "lidar_path", "cams", "lidar2ego_translation", "lidar2ego_rotation",
             "ego2global_translation", "ego2global_rotation", "timestamp", "lidar_token"]),
            json_values, max_size=9), max_size=3),
         "metadata": st.fixed_dictionaries({"version": st.sampled_from(["v1.0-mini", "x"])})}
    ),
    st.fixed_dictionaries(
        {"data_list": st.lists(st.dictionaries(st.sampled_from(
            ["token", "lidar_points", "images", "ego2global", "timestamp", "sample_idx"]),
            json_values, max_size=6), max_size=3),
         "metainfo": st.fixed_dictionaries({"version": st.sampled_from(["v1.0-mini", "x"])})}
    ),
)  # fmt: skip


@SETTINGS
@given(legacy_layouts)
def test_malformed_legacy_layouts_end_in_a_tpvkit_error(tmp_path, obj):
    path = tmp_path / "infos.pkl"
    path.write_bytes(pickle.dumps(obj))
    _ends_in_a_tpvkit_error(lambda: load_infos(path, dataroot=tmp_path))
