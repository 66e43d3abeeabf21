"""The ISMRMRD XML header (fastMRI's ``ismrmrd_header``, ISMRMRD's ``/dataset/xml``): read, write, geometry.

Only the fields this package uses are read, into a JSON-safe dict (``KSpaceCase.attrs["header"]``):

- ``encoded_matrix``, ``recon_matrix``: ``[x, y, z]`` ints (x readout, y phase encode, z slice/partition)
- ``encoded_fov_mm``, ``recon_fov_mm``: ``[x, y, z]`` floats in mm
- ``trajectory``: e.g. ``"cartesian"``
- ``encoding_limits``: ``{"kspace_encoding_step_1": {"minimum", "maximum", "center"}, ...}``
- ``field_strength_t``; ``tr_ms``, ``te_ms``, ``ti_ms``, ``flip_angle_deg`` (lists, as the schema allows
  several values)

Only the first ``<encoding>`` is read. The header holds no patient orientation, so the affine built from
it is the centred diagonal one of :func:`mrdpm.io.geometry.centred_diagonal_affine`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from mrdpm.io.geometry import centred_diagonal_affine

__all__ = ["affine_from_header", "build_header", "parse_header"]

_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
_SEQUENCE = {"TR": "tr_ms", "TE": "te_ms", "TI": "ti_ms", "flipAngle_deg": "flip_angle_deg"}
_LIMIT_FIELDS = ("minimum", "maximum", "center")


def _xyz(node: ET.Element | None, kind: type) -> list | None:
    if node is None:
        return None
    values = [node.findtext(axis) for axis in "xyz"]
    return None if None in values else [kind(v) for v in values]


def parse_header(xml: str | bytes) -> dict:
    """Read the fields listed in the module docstring from an ISMRMRD XML header.

    Parameters
    ----------
    xml
        The header text.

    Returns
    -------
    dict
        JSON-safe; keys are present only when the header has them.

    Raises
    ------
    xml.etree.ElementTree.ParseError
        If the text is not XML (readers wrap this into MrdpmError).
    """
    root = ET.fromstring(xml)
    for node in root.iter():
        node.tag = node.tag.rpartition("}")[2]
    info: dict = {}
    encoding = root.find("encoding")
    if encoding is not None:
        for space, key in (("encodedSpace", "encoded"), ("reconSpace", "recon")):
            matrix = _xyz(encoding.find(f"{space}/matrixSize"), int)
            fov = _xyz(encoding.find(f"{space}/fieldOfView_mm"), float)
            if matrix is not None:
                info[f"{key}_matrix"] = matrix
            if fov is not None:
                info[f"{key}_fov_mm"] = fov
        if encoding.findtext("trajectory") is not None:
            info["trajectory"] = encoding.findtext("trajectory").strip()
        limits = {
            node.tag: {f: int(node.findtext(f)) for f in _LIMIT_FIELDS if node.findtext(f) is not None}
            for node in encoding.findall("encodingLimits/*")
        }
        if limits:
            info["encoding_limits"] = limits
    field = root.findtext("acquisitionSystemInformation/systemFieldStrength_T")
    if field is not None:
        info["field_strength_t"] = float(field)
    for tag, key in _SEQUENCE.items():
        values = [float(node.text) for node in root.findall(f"sequenceParameters/{tag}") if node.text]
        if values:
            info[key] = values
    return info


def _add_xyz(parent: ET.Element, tag: str, values: Sequence) -> None:
    node = ET.SubElement(parent, tag)
    for axis, value in zip("xyz", values, strict=True):
        ET.SubElement(node, axis).text = repr(value)


def build_header(info: dict) -> str:
    """Write a minimal ISMRMRD XML header from a dict in the form :func:`parse_header` returns.

    ``parse_header(build_header(info)) == info`` for every key listed in the module docstring.

    Parameters
    ----------
    info
        Header fields; ``encoded_matrix`` and ``encoded_fov_mm`` are required (the schema needs an
        encoded space). A missing recon space repeats the encoded one; a missing trajectory is Cartesian.

    Returns
    -------
    str
        The XML text.
    """
    for key in ("encoded_matrix", "encoded_fov_mm"):
        if key not in info:
            raise ValueError(f"header info needs {key!r}; got keys {sorted(info)}")
    root = ET.Element("ismrmrdHeader", xmlns=_NAMESPACE)
    if "field_strength_t" in info:
        system = ET.SubElement(root, "acquisitionSystemInformation")
        ET.SubElement(system, "systemFieldStrength_T").text = repr(float(info["field_strength_t"]))
    encoding = ET.SubElement(root, "encoding")
    for space, key in (("encodedSpace", "encoded"), ("reconSpace", "recon")):
        node = ET.SubElement(encoding, space)
        _add_xyz(node, "matrixSize", [int(v) for v in info.get(f"{key}_matrix", info["encoded_matrix"])])
        _add_xyz(node, "fieldOfView_mm", [float(v) for v in info.get(f"{key}_fov_mm", info["encoded_fov_mm"])])
    limits = ET.SubElement(encoding, "encodingLimits")
    for name, values in info.get("encoding_limits", {}).items():
        node = ET.SubElement(limits, name)
        for f in _LIMIT_FIELDS:
            if f in values:
                ET.SubElement(node, f).text = str(int(values[f]))
    ET.SubElement(encoding, "trajectory").text = info.get("trajectory", "cartesian")
    if any(key in info for key in _SEQUENCE.values()):
        sequence = ET.SubElement(root, "sequenceParameters")
        for tag, key in _SEQUENCE.items():
            for value in info.get(key, []):
                ET.SubElement(sequence, tag).text = repr(float(value))
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def affine_from_header(info: dict, shape: Sequence[int]) -> np.ndarray | None:
    """Centred diagonal affine for k-space ``(slices, H, W)`` from the header's fields of view.

    In-plane spacing is ``encoded_fov_mm / encoded_matrix`` along x (readout, H) and y (phase encode, W):
    the k-space grid is the encoded one. Slice spacing is the recon space's ``fov_z / matrix_z`` (for 2D
    scans the slice thickness; the header records no gap), else the encoded space's.

    Parameters
    ----------
    info
        From :func:`parse_header`.
    shape
        ``(slices, H, W)``.

    Returns
    -------
    numpy.ndarray or None
        ``(4, 4)`` index ``(slice, h, w)`` -> mm, or None when the header lacks a usable field of view.
    """
    if "encoded_matrix" not in info or "encoded_fov_mm" not in info:
        return None
    (mx, my, mz), (fx, fy, fz) = info["encoded_matrix"], info["encoded_fov_mm"]
    if "recon_matrix" in info and "recon_fov_mm" in info:
        mz, fz = info["recon_matrix"][2], info["recon_fov_mm"][2]
    if min(mx, my, mz) <= 0 or min(fx, fy, fz) <= 0:
        return None
    return centred_diagonal_affine(shape, (fz / mz, fx / mx, fy / my))
