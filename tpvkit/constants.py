"""The facts of the nuScenes-lidarseg and Occ3D label spaces, the camera rig and the grids, in
one place.

Every other module imports these names; nothing else spells out a class list, a colour or the
camera order.
"""

from __future__ import annotations

# The 32 general nuScenes classes; the position is the `index` field of category.json and the
# value stored in *_lidarseg.bin files.
GENERAL_CLASS_NAMES: tuple[str, ...] = (
    "noise",
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
    "flat.driveable_surface",
    "flat.other",
    "flat.sidewalk",
    "flat.terrain",
    "static.manmade",
    "static.other",
    "static.vegetation",
    "vehicle.ego",
)

# nuScenes-lidarseg challenge classes (16 + ignore at 0), as in the devkit's LidarsegClassMapper.
CLASS_NAMES: tuple[str, ...] = (
    "noise",
    "barrier",
    "bicycle",
    "bus",
    "car",
    "construction_vehicle",
    "motorcycle",
    "pedestrian",
    "traffic_cone",
    "trailer",
    "truck",
    "driveable_surface",
    "other_flat",
    "sidewalk",
    "terrain",
    "manmade",
    "vegetation",
)
NUM_CLASSES = len(CLASS_NAMES)  # 17, index 0 is ignored
IGNORE_INDEX = 0

# The occupancy variant adds a free-space class after the 16 semantic ones.
EMPTY_CLASS_NAME = "empty"
OCCUPANCY_CLASS_NAMES: tuple[str, ...] = CLASS_NAMES + (EMPTY_CLASS_NAME,)

# Occ3D-nuScenes (tpvkit.data.occ3d reads its files): the same 18 indices, class 0 "others" (a
# real class, not ignored) and 17 "free"; ego frame of the key frame, 0.4 m voxels.
OCC3D_RANGE: tuple[float, ...] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)  # ego frame, metres
OCC3D_VOXEL_SIZE = 0.4
OCC3D_GRID: tuple[int, int, int] = (200, 200, 16)  # (X, Y, Z), indexed [x, y, z]
OCC3D_NUM_CLASSES = 18  # 0 others, 1..16 lidarseg, 17 free
OCC3D_FREE = 17
OCC3D_CLASS_NAMES: tuple[str, ...] = ("others", *OCCUPANCY_CLASS_NAMES[1:-1], "free")

# general index (0..31) -> challenge index (0..16)
LABEL_MAP_32_TO_16: tuple[int, ...] = (
    0, 0, 7, 7, 7, 0, 7, 0, 0, 1, 0, 0, 8, 0, 2, 3,
    3, 4, 5, 0, 0, 6, 9, 10, 11, 12, 13, 14, 15, 0, 16, 0,
)  # fmt: skip

# RGB palette for the challenge classes (and "empty"), used by every picture and PLY file.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # noise
    (255, 120, 50),  # barrier
    (255, 192, 203),  # bicycle
    (255, 255, 0),  # bus
    (0, 150, 245),  # car
    (0, 255, 255),  # construction_vehicle
    (200, 180, 0),  # motorcycle
    (255, 0, 0),  # pedestrian
    (255, 240, 150),  # traffic_cone
    (135, 60, 0),  # trailer
    (160, 32, 240),  # truck
    (255, 0, 255),  # driveable_surface
    (139, 137, 137),  # other_flat
    (75, 0, 75),  # sidewalk
    (150, 240, 80),  # terrain
    (230, 230, 250),  # manmade
    (0, 175, 0),  # vegetation
    (255, 255, 255),  # empty
)

# Camera order of the public code; it indexes the camera embeddings, so it is part of the model.
CAMERA_ORDER: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
LIDAR_CHANNEL = "LIDAR_TOP"

# Point-cloud range in the LIDAR_TOP frame: x_min, y_min, z_min, x_max, y_max, z_max (metres).
POINT_CLOUD_RANGE: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)

# Image normalisation of the public (caffe-style) backbone: BGR order, mean subtracted, std 1.
IMG_MEAN_BGR: tuple[float, float, float] = (103.53, 116.28, 123.675)
IMG_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)

# nuScenes split names the devkit knows, by version.
SPLITS_BY_VERSION: dict[str, tuple[str, ...]] = {
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-trainval": ("train", "val"),
    "v1.0-test": ("test",),
}
