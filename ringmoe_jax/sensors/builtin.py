"""The built-in sensors as Band / Sensor data (registry.py), in fixed id order
(`registry.default_registry()` builds the registry of them); source table:
third_party/sensor_specs/bands.csv.
"""
from __future__ import annotations

from ringmoe_jax.sensors.registry import Band, Sensor

# ------------------------------------------------------------------------------------------------
# Band edges and geometry come from the published specifications cited beside each sensor.
# The mean/std are NOT statistics of real archives: they are measured on this package's synthetic
# generator (`ringmoe_jax.data.synthetic`, 4,000 tiles of 64x64, seed 0) and sit in typical
# reflectance / backscatter ranges. The ingestion issue replaces them with statistics computed
# from real tiles; because they are saved in the checkpoint, a model always sees the statistics
# it was trained with.
# ------------------------------------------------------------------------------------------------


def _optical(name: str, lo_nm: float, hi_nm: float) -> Band:
  """Band from its spectral edges (nm)."""
  return Band(name, center_wavelength_nm=(lo_nm + hi_nm) / 2, bandwidth_nm=hi_nm - lo_nm)


# Gaofen-3: C band, 5.4 GHz centre frequency (CRESDA / Zhang Q., "System design and key
# technologies of the GF-3 satellite", Acta Geodaetica et Cartographica Sinica 46(3), 2017).
_GF3_FREQUENCY_GHZ = 5.4

# Gaofen-2 PMS and Gaofen-1 WFV share the same four MS band edges (CRESDA satellite pages:
# blue 450-520, green 520-590, red 630-690, NIR 770-890 nm).
_GAOFEN2_PMS = Sensor(
    name="gaofen2_pms",
    modality="opt",
    # RGB order, as the optical patch embedding expects.
    bands=(_optical("R", 630, 690), _optical("G", 520, 590), _optical("B", 450, 520)),
    # PMS: 0.8 m panchromatic, 3.2 m multispectral at nadir. We use the 0.8 m pansharpened RGB
    # product, the resolution of the paper's optical tiles.
    gsd_m=0.8,
    product_level="L1A",
    scale="reflectance",
    mean=(0.0971, 0.1003, 0.0763),
    std=(0.0816, 0.0426, 0.0358),
    nodata=0.0,
    description="Gaofen-2 PMS pansharpened true-colour (R, G, B), TOA reflectance",
)

_GAOFEN1_WFV = Sensor(
    name="gaofen1_wfv",
    modality="ms",
    bands=(_optical("B1", 450, 520), _optical("B2", 520, 590), _optical("B3", 630, 690),
           _optical("B4", 770, 890)),
    gsd_m=16.0,  # Wide-field-of-view cameras, 16 m, 800 km combined swath (CRESDA).
    product_level="L1A",
    scale="reflectance",
    mean=(0.0763, 0.1003, 0.0971, 0.2746),
    std=(0.0358, 0.0426, 0.0816, 0.1562),
    nodata=0.0,
    description="Gaofen-1 WFV blue, green, red, NIR; TOA reflectance after CRESDA calibration",
)

# Quad-pol SLC: HH, HV, VH, VV, each as (real, imag). GF-3 QPS-I mode: 8 m, 30 km swath.
_GAOFEN3_SLC = Sensor(
    name="gaofen3_slc",
    modality="sar_l1",
    bands=tuple(
        Band(f"{pol}_{part[:2]}", radar_band="C", center_frequency_ghz=_GF3_FREQUENCY_GHZ,
             polarization=pol, component=part)
        for pol in ("HH", "HV", "VH", "VV") for part in ("real", "imag")),
    gsd_m=8.0,
    product_level="SLC",
    scale="linear",
    # Complex Gaussian channels are zero-mean; std = sqrt(E|S|^2 / 2) per channel.
    mean=(0.0,) * 8,
    std=(0.2020, 0.2020, 0.0923, 0.0923, 0.0932, 0.0932, 0.1963, 0.1963),
    nodata=0.0,
    looks=1.0,
    description="Gaofen-3 quad-pol single-look complex (QPS-I), calibrated scattering amplitudes",
)

# Detected amplitude product (GRD-like, multi-looked). GF-3 fine-stripmap detected products are
# ~10 m after multi-looking; 4 looks is a typical ENL for such products.
_GAOFEN3_AMP = Sensor(
    name="gaofen3_amp",
    modality="sar_l2",
    bands=(Band("HH_amp", radar_band="C", center_frequency_ghz=_GF3_FREQUENCY_GHZ,
                polarization="HH", component="amplitude"),),
    gsd_m=10.0,
    product_level="GRD",
    scale="linear",
    mean=(0.2371,),
    std=(0.1677,),
    nodata=0.0,
    looks=4.0,
    description="Gaofen-3 detected HH amplitude sqrt(sigma0), 4 looks",
)

# ------------------------------------------------------------------------------------------------
# Further built-ins (issue 4). Band tables with their sources and licences are in
# third_party/sensor_specs/ (bands.csv, README.md); tests/test_sensors.py checks these definitions
# against that table and against the band definitions shipped by spyndex (MIT). Where spyndex
# has the platform (Sentinel-2A, Landsat 8/9, WorldView-2/3) its centre / bandwidth is used.
#
# Modality choice: a 3-band true-colour product is `opt` (R, G, B order); every other optical
# product is `ms` with all of its reflective bands. The model's `ms` input has 4 channels by
# default: use a sensor with more bands either by selecting 4 at ingestion
# (`--bands=B2,B3,B4,B8` into a user sensor of those 4 bands) or by setting
# `model.in_channels.ms` to its band count (the pipeline pads every tile to the largest
# in_channels). Sentinel-1 is dual-pol (VV, VH): its SLC has 4 channels and its GRD 2, where the
# paper's sar_l1 / sar_l2 have 8 / 1; the same two options apply (missing polarisations are
# zero-padded channels, never NaN).
#
# mean / std, as for the four sensors above, are measured on the synthetic generator (1,000
# tiles of 64 px per sensor, seed 0; SLC: zero mean, std sqrt(E|S|^2 / 2)), not on real
# archives: ingestion writes real per-band statistics into its manifest, and a user sensor file
# carries them.
# ------------------------------------------------------------------------------------------------


def _wl(name: str, center_nm: float, width_nm: float) -> Band:
  """Band from centre wavelength and bandwidth (nm)."""
  return Band(name, center_wavelength_nm=center_nm, bandwidth_nm=width_nm)


# Gaofen-6 WFV (CRESDA; Lu C. et al., "Gaofen-6 WFV", 2018): B1-B4 as Gaofen-1 WFV, then red edge
# 1 690-730, red edge 2 730-770, purple 400-450, yellow 590-630 nm; 16 m, 800 km swath. CRESDA
# publishes calibration gains per year, so ingestion expects calibrated reflectance.
_GAOFEN6_WFV_BANDS = (
    _optical("B1", 450, 520), _optical("B2", 520, 590), _optical("B3", 630, 690),
    _optical("B4", 770, 890), _optical("B5", 690, 730), _optical("B6", 730, 770),
    _optical("B7", 400, 450), _optical("B8", 590, 630))

# Jilin-1 video satellites (Chang Guang Satellite Technology; Video-03..08 product sheets as
# summarised in the satellite-video tracking literature): true-colour video, ~0.92 m at nadir,
# blue 437-512, green 489-585, red 580-723 nm. The overlapping edges are the sheets' values.
_JILIN1_BANDS = (_optical("R", 580, 723), _optical("G", 489, 585), _optical("B", 437, 512))

# Sentinel-2 MSI (ESA Sentinel-2 User Handbook / S2A spectral response v3; spyndex `sentinel2a`).
# Products store DN = 10000 * reflectance + 1000 since processing baseline 04.00 (2022-01-25),
# i.e. reflectance = DN * 1e-4 - 0.1 (BOA/RADIO_ADD_OFFSET = -1000); DN 0 is nodata.
_S2_BANDS = (
    _wl("B1", 442.7, 21.0), _wl("B2", 492.4, 66.0), _wl("B3", 559.8, 36.0),
    _wl("B4", 664.6, 31.0), _wl("B5", 704.1, 15.0), _wl("B6", 740.5, 15.0),
    _wl("B7", 782.8, 20.0), _wl("B8", 832.8, 106.0), _wl("B8A", 864.7, 21.0),
    _wl("B9", 945.1, 20.0), _wl("B10", 1373.5, 31.0), _wl("B11", 1613.7, 91.0),
    _wl("B12", 2202.4, 175.0))
_S2_L2A_BANDS = tuple(b for b in _S2_BANDS if b.name != "B10")  # cirrus band dropped in L2A

# Landsat 8/9 OLI (USGS Landsat 8-9 OLI/TIRS C2 L2 Science Product Guide; spyndex `landsat8/9`).
# Collection 2 Level-2 surface reflectance: reflectance = DN * 2.75e-5 - 0.2, DN 0 is fill.
_OLI_BANDS = (
    _wl("B1", 440.0, 20.0), _wl("B2", 480.0, 60.0), _wl("B3", 560.0, 60.0),
    _wl("B4", 655.0, 30.0), _wl("B5", 865.0, 30.0), _wl("B6", 1610.0, 80.0),
    _wl("B7", 2200.0, 180.0))

# WorldView-2 / -3 VNIR multispectral (DigitalGlobe/Maxar data sheets; spyndex `wv2`, `wv3` for
# all but red edge and NIR2): coastal, blue, green, yellow, red, red edge 705-745, NIR1,
# NIR2 860-1040 nm. Radiometric scaling (absCalFactor / effectiveBandwidth) is per image, in the
# product's .IMD file, so ingestion expects calibrated reflectance.
#
# `dtype` is set only where a fixed DN scaling exists (Sentinel-2, Landsat): ingestion then
# requires the DN product's storage type, so a float file is not scaled twice by mistake.
_WV_BANDS = (
    _wl("B1", 425.0, 50.0), _wl("B2", 480.0, 60.0), _wl("B3", 545.0, 70.0),
    _wl("B4", 605.0, 40.0), _wl("B5", 660.0, 60.0), _optical("B6", 705, 745),
    _wl("B7", 832.5, 125.0), _optical("B8", 860, 1040))

# Sentinel-1 C-SAR (ESA Sentinel-1 User Handbook): C band, 5.405 GHz; IW mode dual-pol VV+VH.
_S1_FREQUENCY_GHZ = 5.405


def _s1(pol: str, component: str, suffix: str = "") -> Band:
  return Band(pol + suffix, radar_band="C", center_frequency_ghz=_S1_FREQUENCY_GHZ,
              polarization=pol, component=component)


_STATS = {
    # name: (mean, std) per band, on the synthetic generator; see the note above.
    "gaofen6_wfv": ((0.0751, 0.1004, 0.1035, 0.2723, 0.1359, 0.2109, 0.0626, 0.1001),
                    (0.0358, 0.0429, 0.0823, 0.1583, 0.0803, 0.1078, 0.0297, 0.0657)),
    "jilin1": ((0.109, 0.0936, 0.0725),
                    (0.0744, 0.0399, 0.035)),
    "sentinel1_slc": ((0.0, 0.0, 0.0, 0.0),
                    (0.1994, 0.1994, 0.0942, 0.0942)),
    "sentinel1_grd": ((0.2482, 0.1055),
                    (0.1336, 0.0791)),
    "sentinel2_l1c": ((0.0665, 0.0772, 0.1038, 0.1037, 0.1219, 0.1963, 0.2514, 0.2746, 0.2823, 0.2837, 0.249, 0.2263, 0.153),
                    (0.0317, 0.0362, 0.0429, 0.0839, 0.084, 0.0978, 0.1413, 0.1606, 0.1664, 0.1638, 0.1327, 0.1265, 0.1149)),
    "sentinel2_l2a": ((0.0665, 0.0772, 0.1038, 0.1038, 0.122, 0.1963, 0.2514, 0.2746, 0.2823, 0.2838, 0.2263, 0.1531),
                    (0.0317, 0.0362, 0.0429, 0.0838, 0.0839, 0.0977, 0.1411, 0.1605, 0.1663, 0.1636, 0.1263, 0.1148)),
    "landsat8_oli": ((0.0659, 0.0734, 0.102, 0.1018, 0.2823, 0.2268, 0.1533),
                    (0.0314, 0.0357, 0.0439, 0.0823, 0.1664, 0.1266, 0.1148)),
    "landsat9_oli": ((0.0659, 0.0734, 0.102, 0.1018, 0.2823, 0.2268, 0.1533),
                    (0.0314, 0.0357, 0.0439, 0.0823, 0.1664, 0.1266, 0.1148)),
    "worldview2": ((0.0626, 0.0734, 0.098, 0.1003, 0.1035, 0.1644, 0.2727, 0.2831),
                    (0.0297, 0.0357, 0.0403, 0.0635, 0.0823, 0.0825, 0.1586, 0.1627)),
    "worldview3": ((0.0626, 0.0734, 0.098, 0.1003, 0.1035, 0.1644, 0.2727, 0.2831),
                    (0.0297, 0.0357, 0.0403, 0.0635, 0.0823, 0.0825, 0.1586, 0.1627)),
}


def _stats(name: str, n: int) -> dict[str, tuple[float, ...]]:
  mean, std = _STATS[name]
  assert len(mean) == len(std) == n, name
  return {"mean": mean, "std": std}


_MORE_SENSORS = (
    Sensor(name="gaofen6_wfv", modality="ms", bands=_GAOFEN6_WFV_BANDS, gsd_m=16.0,
           product_level="L1A", scale="reflectance", nodata=0.0,
           description="Gaofen-6 WFV 8 bands (4 of Gaofen-1 WFV + 2 red edge, "
           "purple, yellow); TOA reflectance after CRESDA calibration",
           **_stats("gaofen6_wfv", 8)),
    Sensor(name="jilin1", modality="opt", bands=_JILIN1_BANDS, gsd_m=0.92, product_level="L1",
           scale="reflectance", nodata=0.0, description="Jilin-1 video satellite true-colour "
           "frames (R, G, B), reflectance", **_stats("jilin1", 3)),
    Sensor(name="sentinel1_slc", modality="sar_l1",
           bands=(_s1("VV", "real", "_re"), _s1("VV", "imag", "_im"), _s1("VH", "real", "_re"),
                  _s1("VH", "imag", "_im")),
           gsd_m=10.0,  # IW resolution 5 m (range) x 20 m (azimuth); geometric mean ~10 m
           product_level="SLC", scale="linear", nodata=0.0, looks=1.0,
           description="Sentinel-1 IW SLC dual-pol VV+VH, calibrated complex scattering "
           "amplitudes (real, imag); a complex (CInt16/CFloat32) file band fills both", **_stats("sentinel1_slc", 4)),
    Sensor(name="sentinel1_grd", modality="sar_l2",
           bands=(_s1("VV", "amplitude"), _s1("VH", "amplitude")),
           gsd_m=10.0, product_level="GRD", scale="linear", nodata=0.0,
           looks=4.4,  # IW GRD high resolution: ENL 4.4 (Sentinel-1 User Handbook)
           description="Sentinel-1 IW GRD high resolution VV+VH amplitude sqrt(sigma0) after "
           "LUT calibration (the LUT is per product, so files must be calibrated)",
           **_stats("sentinel1_grd", 2)),
    Sensor(name="sentinel2_l1c", modality="ms", bands=_S2_BANDS, gsd_m=10.0,
           product_level="L1C", scale="reflectance", nodata=0.0, dtype="uint16",
           dn_gain=(1e-4,) * 13, dn_offset=(-0.1,) * 13, dn_nodata=0.0,
           description="Sentinel-2 MSI L1C TOA reflectance, 13 bands at 10/20/60 m "
           "(resampled to 10 m)", **_stats("sentinel2_l1c", 13)),
    Sensor(name="sentinel2_l2a", modality="ms", bands=_S2_L2A_BANDS, gsd_m=10.0,
           product_level="L2A", scale="reflectance", nodata=0.0, dtype="uint16",
           dn_gain=(1e-4,) * 12, dn_offset=(-0.1,) * 12, dn_nodata=0.0,
           description="Sentinel-2 MSI L2A surface reflectance, 12 bands (no B10)",
           **_stats("sentinel2_l2a", 12)),
    Sensor(name="landsat8_oli", modality="ms", bands=_OLI_BANDS, gsd_m=30.0,
           product_level="C2L2SP", scale="reflectance", nodata=0.0, dtype="uint16",
           dn_gain=(2.75e-5,) * 7, dn_offset=(-0.2,) * 7, dn_nodata=0.0,
           description="Landsat 8 OLI Collection 2 Level-2 surface reflectance, bands 1-7",
           **_stats("landsat8_oli", 7)),
    Sensor(name="landsat9_oli", modality="ms", bands=_OLI_BANDS, gsd_m=30.0,
           product_level="C2L2SP", scale="reflectance", nodata=0.0, dtype="uint16",
           dn_gain=(2.75e-5,) * 7, dn_offset=(-0.2,) * 7, dn_nodata=0.0,
           description="Landsat 9 OLI-2 Collection 2 Level-2 surface reflectance, bands 1-7",
           **_stats("landsat9_oli", 7)),
    Sensor(name="worldview2", modality="ms", bands=_WV_BANDS, gsd_m=1.84, product_level="L2A",
           scale="reflectance", nodata=0.0, description="WorldView-2 8-band VNIR multispectral "
           "(1.84 m at nadir), reflectance", **_stats("worldview2", 8)),
    Sensor(name="worldview3", modality="ms", bands=_WV_BANDS, gsd_m=1.24, product_level="L2A",
           scale="reflectance", nodata=0.0, description="WorldView-3 8-band VNIR multispectral "
           "(1.24 m at nadir), reflectance", **_stats("worldview3", 8)),
)

# The paper's four first: their ids (0-3) are those of earlier checkpoints.
PAPER_SENSORS: tuple[Sensor, ...] = (_GAOFEN2_PMS, _GAOFEN1_WFV, _GAOFEN3_SLC, _GAOFEN3_AMP)
BUILTIN_SENSORS: tuple[Sensor, ...] = PAPER_SENSORS + _MORE_SENSORS
