"""What the sample scene's pixels are made of: bands, class codes, materials and their spectra.

Several materials share a class (dense crops and tree canopy, dirt tracks and red soil, granite
and concrete): that is what makes the classes learnable but not trivially so. Also here: the
illumination (sun, shadow, haze) and the sensor noise.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import numpy as np

BAND_NAMES = ("blue", "green", "red", "nir")
NODATA = 0
IGNORE = 255
REFLECTANCE_SCALE = 1e-4  # stored value x scale = surface reflectance

WATER, TREE, CROP, BUILT, SOIL, ROAD = 1, 2, 3, 4, 5, 6  # codes of configs/classes/landcover6.yaml
CLASS_CODES = (WATER, TREE, CROP, BUILT, SOIL, ROAD)

# Sun at ~10:30 local time: from the south-east, 55 degrees up. Unit vector towards the sun in
# pixel axes (x east, y down = south), and the rise of a sun ray per metre travelled.
_SUN_XY = np.array([0.7071, 0.7071], dtype=np.float32)
_TAN_ELEV = float(np.tan(np.radians(55.0)))
_MAX_HEIGHT = 16.0


class Mat(IntEnum):
    CROP = 0
    CROP_DENSE = 1  # sugarcane / banana: spectrally close to tree canopy, but smooth
    CROP_YOUNG = 2
    CROP_DRY = 3
    GRASS = 4
    SOIL_RED = 5  # lateritic soil: reddish, like clay roof tiles
    SOIL_PLOUGH = 6
    SOIL_LIGHT = 7
    ROCK = 8  # granite sheet rock: grey, like concrete
    MUD = 9
    GROUND = 10  # trodden village ground
    TREE = 11
    TREE_EUC = 12
    SHRUB = 13
    WATER_CLEAR = 14
    WATER_TURBID = 15
    WATER_ALGAL = 16
    WATER_DARK = 17
    WATER_WEED = 18  # water hyacinth mats: water by label, vegetation by spectrum
    ROOF_CONCRETE = 19
    ROOF_TILE = 20
    ROOF_METAL = 21
    ROOF_BLUE = 22
    ROOF_DARK = 23
    PAVED = 24
    ASPHALT = 25
    CONCRETE_ROAD = 26
    DIRT_ROAD = 27  # labelled road, spectrally bare soil
    ORCHARD = 28  # parcel markers, resolved per pixel into trees and the ground between them
    PLANTATION = 29
    SCRUB = 30


class _Props(NamedTuple):
    code: int
    spec: tuple[float, float, float, float]  # B, G, R, NIR reflectance x 10000
    macro: float  # amplitude of field-scale brightness variation
    fine: float  # amplitude of metre-scale texture (crowns, clods)
    green: float  # how far the vigour field moves it along the soil <-> vegetation axis
    gain_sd: float  # spread of brightness between objects of this material


_PROPS: dict[Mat, _Props] = {
    Mat.CROP: _Props(CROP, (380, 700, 430, 3800), 0.10, 0.04, 0.45, 0.10),
    Mat.CROP_DENSE: _Props(CROP, (330, 610, 360, 4100), 0.07, 0.05, 0.15, 0.08),
    Mat.CROP_YOUNG: _Props(CROP, (620, 880, 960, 2800), 0.10, 0.05, 0.35, 0.10),
    Mat.CROP_DRY: _Props(CROP, (760, 1000, 1280, 2250), 0.10, 0.05, 0.25, 0.10),
    Mat.GRASS: _Props(CROP, (540, 860, 780, 3000), 0.12, 0.06, 0.35, 0.10),
    Mat.SOIL_RED: _Props(SOIL, (700, 1040, 1560, 2300), 0.10, 0.05, 0.10, 0.10),
    Mat.SOIL_PLOUGH: _Props(SOIL, (540, 750, 1050, 1600), 0.10, 0.07, 0.08, 0.12),
    Mat.SOIL_LIGHT: _Props(SOIL, (1000, 1300, 1650, 2200), 0.08, 0.05, 0.08, 0.10),
    Mat.ROCK: _Props(SOIL, (1300, 1420, 1530, 1800), 0.12, 0.16, 0.00, 0.10),
    Mat.MUD: _Props(SOIL, (560, 700, 850, 1200), 0.12, 0.05, 0.15, 0.10),
    Mat.GROUND: _Props(SOIL, (820, 1050, 1350, 1700), 0.08, 0.06, 0.05, 0.08),
    Mat.TREE: _Props(TREE, (310, 560, 330, 3500), 0.08, 0.30, 0.10, 0.18),
    Mat.TREE_EUC: _Props(TREE, (420, 640, 490, 2900), 0.06, 0.22, 0.05, 0.08),
    Mat.SHRUB: _Props(TREE, (420, 680, 520, 2900), 0.06, 0.18, 0.10, 0.08),
    Mat.WATER_CLEAR: _Props(WATER, (420, 480, 300, 150), 0.04, 0.01, 0.00, 0.08),
    Mat.WATER_TURBID: _Props(WATER, (520, 640, 560, 300), 0.05, 0.01, 0.00, 0.08),
    Mat.WATER_ALGAL: _Props(WATER, (360, 600, 400, 520), 0.06, 0.02, 0.05, 0.10),
    Mat.WATER_DARK: _Props(WATER, (360, 540, 400, 260), 0.05, 0.02, 0.00, 0.08),
    Mat.WATER_WEED: _Props(WATER, (420, 720, 480, 2400), 0.08, 0.10, 0.10, 0.10),
    Mat.ROOF_CONCRETE: _Props(BUILT, (1700, 1800, 1900, 2150), 0.03, 0.03, 0.00, 0.12),
    Mat.ROOF_TILE: _Props(BUILT, (900, 1100, 1800, 2250), 0.03, 0.04, 0.00, 0.10),
    Mat.ROOF_METAL: _Props(BUILT, (2300, 2400, 2450, 2600), 0.02, 0.02, 0.00, 0.10),
    Mat.ROOF_BLUE: _Props(BUILT, (1750, 1520, 1080, 1450), 0.02, 0.02, 0.00, 0.10),
    Mat.ROOF_DARK: _Props(BUILT, (780, 860, 900, 1100), 0.03, 0.03, 0.00, 0.10),
    Mat.PAVED: _Props(BUILT, (1350, 1450, 1550, 1800), 0.05, 0.03, 0.00, 0.08),
    Mat.ASPHALT: _Props(ROAD, (640, 740, 830, 960), 0.05, 0.03, 0.00, 0.08),
    Mat.CONCRETE_ROAD: _Props(ROAD, (1100, 1200, 1350, 1550), 0.05, 0.03, 0.00, 0.08),
    Mat.DIRT_ROAD: _Props(ROAD, (1050, 1330, 1750, 2250), 0.06, 0.05, 0.03, 0.08),
    Mat.ORCHARD: _Props(CROP, (840, 1060, 1340, 2250), 0.10, 0.05, 0.25, 0.10),
    Mat.PLANTATION: _Props(TREE, (420, 640, 490, 2900), 0.06, 0.22, 0.05, 0.08),
    Mat.SCRUB: _Props(CROP, (720, 980, 1200, 2350), 0.10, 0.06, 0.25, 0.10),
}
_N_MAT = len(Mat)
_CLASS_OF = np.array([_PROPS[m].code for m in Mat], dtype=np.uint8)
_SPEC = np.array([_PROPS[m].spec for m in Mat], dtype=np.float32).T.copy()  # (4, n_mat)
_MACRO = np.array([_PROPS[m].macro for m in Mat], dtype=np.float32)
_FINE = np.array([_PROPS[m].fine for m in Mat], dtype=np.float32)
_GREEN = np.array([_PROPS[m].green for m in Mat], dtype=np.float32)
_GAIN_SD = np.array([_PROPS[m].gain_sd for m in Mat], dtype=np.float32)
_IS_LAKE_WATER = np.isin(np.arange(_N_MAT), [Mat.WATER_CLEAR, Mat.WATER_TURBID, Mat.WATER_ALGAL])

_VIGOUR_AXIS = np.array([-260, -280, -720, 950], dtype=np.float32)  # soil -> green vegetation
_BUND_SPEC = np.array([700, 950, 1000, 2500], dtype=np.float32)  # grassy field bunds
_SHADOW = np.array([0.55, 0.45, 0.42, 0.36], dtype=np.float32)  # diffuse skylight is blue
_HAZE = np.array([160, 110, 70, 30], dtype=np.float32)
_NOISE_SD = np.array([22, 22, 26, 40], dtype=np.float32)
