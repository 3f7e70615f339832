"""2.5-D views of volumes (tfmed.data.volume_views): plane geometry, orientation, sampling, errors."""
import math

import numpy as np
import pytest

from tfmed.data.volume_views import (PLANE_SETS, center_from_voxel, check_center_inside, extract_views,
                                     jitter_center, plane_axes, rotate_about_z, sample_plane, volume_center)
from tfmed.data.volumes import Volume, VolumeError

# Canonical DICOM axial geometry: slices grow toward +z (head), rows toward +y (back), columns toward +x (left).
CANONICAL = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


OBLIQUE = rotation(2, 20) @ rotation(0, 30) @ CANONICAL
# A point in patient space (LPS mm) that every test volume is centred on; the lesion sits off it.
MIDDLE = np.array([-31.7, 12.4, -88.0])
LESION = MIDDLE + [3.0, -2.0, 4.0]
RADIUS = 6.0
SIZE, MM = 33, 1.0  # views of 33 x 33 pixels 1 mm apart: centre pixel 16, +8 mm is pixel 24
GEOMETRIES = {  # name: (shape, spacing, direction)
    "isotropic": ((40, 40, 40), (1.0, 1.0, 1.0), CANONICAL),
    "anisotropic": ((16, 48, 48), (2.5, 0.7, 0.7), CANONICAL),
    "oblique": ((36, 40, 40), (1.2, 0.9, 0.9), OBLIQUE),
}


def scene_volume(shape, spacing, direction, scene, middle=MIDDLE) -> Volume:
    """A volume of ``shape`` centred on ``middle`` whose voxels hold ``scene(LPS positions (N, 3))``."""
    direction = np.asarray(direction, float)
    origin = middle - direction @ ((np.asarray(shape) - 1) / 2 * np.asarray(spacing))
    volume = Volume(np.zeros(shape, np.float32), tuple(spacing), origin, direction)
    points = volume.voxel_to_patient(np.indices(shape).reshape(3, -1).T)
    volume.array = scene(points).reshape(shape).astype(np.float32)
    return volume


def ball(center, radius=RADIUS, inside=1000.0, outside=-1000.0):
    return lambda points: np.where(np.linalg.norm(points - center, axis=1) <= radius, inside, outside)


def pixel_positions(center, u, v, size=SIZE, spacing=MM):
    """The LPS position of every pixel of a view, as documented (rows along v, columns along u)."""
    steps = (np.arange(size) - (size - 1) / 2) * spacing
    return center + steps[None, :, None] * u + steps[:, None, None] * v


# ---------------------------------------------------------------------------------------------- plane sets


def test_plane_sets_have_the_documented_axes():
    axes = {name: (u, v) for name, u, v in plane_axes("orthogonal")}
    assert list(axes) == ["axial", "coronal", "sagittal"]
    np.testing.assert_array_equal(axes["axial"], [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(axes["coronal"], [[1, 0, 0], [0, 0, -1]])
    np.testing.assert_array_equal(axes["sagittal"], [[0, 1, 0], [0, 0, -1]])
    nine = plane_axes("ciompi9")
    assert [name for name, _, _ in nine[:3]] == ["axial", "coronal", "sagittal"]
    assert len(nine) == 9 and len({name for name, _, _ in nine}) == 9
    normals = []
    for name, u, v in nine:
        assert np.linalg.norm(u) == pytest.approx(1) and np.linalg.norm(v) == pytest.approx(1)
        assert u @ v == pytest.approx(0, abs=1e-12)
        normals.append(np.cross(u, v))
    for i in range(9):  # no two planes share a normal (up to sign)
        for j in range(i):
            assert abs(normals[i] @ normals[j]) < 0.99, (nine[i][0], nine[j][0])
    for name, u, v in nine[3:]:
        axis = name.split("_")[1]
        contained = np.eye(3)["xyz".index(axis)]
        assert abs(np.cross(u, v) @ contained) < 1e-12, name  # the named axis lies in the plane
        assert v[2] < 0, name  # every diagonal view has the feet toward its bottom
    s = 1 / math.sqrt(2)
    diagonal = {name: (u, v) for name, u, v in nine[3:]}
    np.testing.assert_allclose(diagonal["diagonal_z_x+y"], [[s, s, 0], [0, 0, -1]])
    np.testing.assert_allclose(diagonal["diagonal_x_y-z"], [[1, 0, 0], [0, s, -s]])
    np.testing.assert_allclose(diagonal["diagonal_y_x+z"], [[0, 1, 0], [-s, 0, -s]])
    assert [(name, u.tolist(), v.tolist()) for name, u, v in plane_axes("adjacent")] == [
        ("adjacent_axial", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])]
    assert PLANE_SETS == ("orthogonal", "ciompi9", "adjacent")


def test_plane_axes_returns_copies():
    plane_axes("orthogonal")[0][1][0] = 99.0
    assert plane_axes("orthogonal")[0][1][0] == 1.0


def test_rotation_about_z():
    u, v = np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    same_u, same_v = rotate_about_z(u, v, 0)
    np.testing.assert_array_equal(same_u, u)
    np.testing.assert_array_equal(same_v, v)
    turned_u, turned_v = rotate_about_z(u, v, 90)  # right-handed: +x turns toward +y
    np.testing.assert_allclose(turned_u, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(turned_v, [-1, 0, 0], atol=1e-12)
    for name, u, v in plane_axes("ciompi9"):
        ru, rv = rotate_about_z(u, v, 37)
        assert ru @ rv == pytest.approx(0, abs=1e-12) and np.linalg.norm(ru) == pytest.approx(1)
        assert ru[2] == pytest.approx(u[2]) and rv[2] == pytest.approx(v[2])  # z components are kept
        np.testing.assert_allclose(rotate_about_z(u, v, 360)[0], u, atol=1e-12)


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("size", [33, 8])
def test_pixels_sit_where_documented(geometry, size):
    """Trilinear interpolation reproduces a linear function exactly: each pixel = the function at its position."""
    shape, spacing, direction = GEOMETRIES[geometry]
    gradient = np.array([3.0, -2.0, 5.0])
    volume = scene_volume(shape, spacing, direction, lambda p: (p - MIDDLE) @ gradient + 7.0)
    u, v = rotate_about_z(*plane_axes("ciompi9")[5][1:], 25)
    center = MIDDLE + [1.3, -0.4, 0.6]
    view = sample_plane(volume, center, u, v, size, 0.6)
    assert view.dtype == np.float32 and view.shape == (size, size)
    expected = (pixel_positions(center, u, v, size, 0.6) - MIDDLE) @ gradient + 7.0
    np.testing.assert_allclose(view, expected, atol=2e-3)
    shifted = sample_plane(volume, center, u, v, size, 0.6, offset_mm=[0.0, 0.0, -1.5])
    np.testing.assert_allclose(shifted, expected - 1.5 * 5.0, atol=2e-3)
    if size % 2:
        assert view[size // 2, size // 2] == pytest.approx((center - MIDDLE) @ gradient + 7.0, abs=1e-3)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("planes", ["orthogonal", "ciompi9"])
def test_sphere_appears_centred_with_its_radius_in_every_view(geometry, planes):
    shape, spacing, direction = GEOMETRIES[geometry]
    volume = scene_volume(shape, spacing, direction, ball(LESION))
    views = extract_views(volume, LESION, planes, SIZE, MM)
    assert views.shape == (len(plane_axes(planes)), SIZE, SIZE, 1) and views.dtype == np.float32
    rows, columns = np.mgrid[0:SIZE, 0:SIZE] - SIZE // 2
    far = np.hypot(rows, columns) * MM > RADIUS + 3.0
    for (name, _, _), view in zip(plane_axes(planes), views[..., 0]):
        assert view[SIZE // 2, SIZE // 2] == pytest.approx(1000, abs=1e-3), name
        assert np.all(view[far] == -1000), name
        measured = np.count_nonzero(view[SIZE // 2] > 0) / 2  # radius in pixels along the centre row
        assert abs(measured - RADIUS / MM) <= 1, (name, measured)
        along_v = np.count_nonzero(view[:, SIZE // 2] > 0) / 2  # the column crosses the slices too
        assert abs(along_v - RADIUS / MM) <= 1 + 0.5 * max(spacing) / MM, (name, along_v)


def test_sphere_radius_at_a_finer_view_spacing_on_the_anisotropic_volume():
    shape, spacing, direction = GEOMETRIES["anisotropic"]
    volume = scene_volume(shape, spacing, direction, ball(LESION))
    views = extract_views(volume, LESION, "ciompi9", 41, 0.4, rotation_degrees=15)
    for view in views[..., 0]:
        assert view[20, 20] == pytest.approx(1000)
        assert abs(np.count_nonzero(view[20] > 0) / 2 - RADIUS / 0.4) <= 1


# Markers 8 mm from MIDDLE toward the patient's left (+x), back (+y) and head (+z).
MARKERS = {"x": np.array([8.0, 0, 0]), "y": np.array([0, 8.0, 0]), "z": np.array([0, 0, 8.0])}
# Where each marker shows in each view (row, column), None where the plane misses it. Centre pixel 16.
EXPECTED = {
    "axial": {"x": (16, 24), "y": (24, 16), "z": None},  # left on the right, back at the bottom
    "coronal": {"x": (16, 24), "y": None, "z": (8, 16)},  # left on the right, head at the top
    "sagittal": {"x": None, "y": (16, 24), "z": (8, 16)},  # back on the right, head at the top
    "diagonal_z_x+y": {"x": None, "y": None, "z": (8, 16)},
    "diagonal_z_x-y": {"x": None, "y": None, "z": (8, 16)},
    "diagonal_x_y+z": {"x": (16, 24), "y": None, "z": None},
    "diagonal_x_y-z": {"x": (16, 24), "y": None, "z": None},
    "diagonal_y_x+z": {"x": None, "y": (16, 24), "z": None},
    "diagonal_y_x-z": {"x": None, "y": (16, 24), "z": None},
}


def marker_volumes(geometry):
    shape, spacing, direction = GEOMETRIES[geometry]
    return {axis: scene_volume(shape, spacing, direction, ball(MIDDLE + offset, 2.5, 1.0, 0.0))
            for axis, offset in MARKERS.items()}


@pytest.mark.parametrize("geometry", ["isotropic", "oblique"])
def test_markers_show_in_the_documented_place_of_each_view(geometry):
    for axis, volume in marker_volumes(geometry).items():
        views = extract_views(volume, MIDDLE, "ciompi9", SIZE, MM)[..., 0]
        for (name, _, _), view in zip(plane_axes("ciompi9"), views):
            where = EXPECTED[name][axis]
            if where is None:
                assert view.max() == 0, (name, axis)
            else:
                assert view[where] > 0.9, (name, axis, np.unravel_index(view.argmax(), view.shape))
                mirrored = (32 - where[0], 32 - where[1])
                assert view[mirrored] == 0, (name, axis)


def test_rotation_turns_the_views_about_z():
    markers = marker_volumes("isotropic")
    axial = {axis: extract_views(v, MIDDLE, "orthogonal", SIZE, MM)[0, ..., 0] for axis, v in markers.items()}
    turned = {axis: extract_views(v, MIDDLE, "orthogonal", SIZE, MM, rotation_degrees=90)
              for axis, v in markers.items()}
    # +90 degrees: the +y marker moves to where +x was (right of centre), the +x marker to above centre.
    assert turned["y"][0, 16, 24, 0] > 0.9 and turned["y"][0, 24, 16, 0] == 0
    assert turned["x"][0, 8, 16, 0] > 0.9 and turned["x"][0, 16, 24, 0] == 0
    for axis in markers:  # the axial view's content turns counter-clockwise on screen
        np.testing.assert_allclose(turned[axis][0, ..., 0], np.rot90(axial[axis]), atol=1e-5)
    # The coronal view turned by 90 degrees has exactly the sagittal view's axes (u = +y, v = -z).
    sphere = scene_volume(*GEOMETRIES["oblique"], ball(LESION))
    coronal_90 = extract_views(sphere, LESION + [1, 1, 1], "orthogonal", SIZE, MM, rotation_degrees=90)[1]
    sagittal = extract_views(sphere, LESION + [1, 1, 1], "orthogonal", SIZE, MM)[2]
    np.testing.assert_allclose(coronal_90, sagittal, atol=1e-3)
    # Every view of a rotated set is sample_plane with rotate_about_z applied to its axes.
    rotated = extract_views(sphere, LESION, "ciompi9", 17, 0.8, rotation_degrees=-33)
    for index, (_, u, v) in enumerate(plane_axes("ciompi9")):
        np.testing.assert_array_equal(rotated[index, ..., 0],
                                      sample_plane(sphere, LESION, *rotate_about_z(u, v, -33), 17, 0.8))


def test_the_same_anatomy_stored_in_other_voxel_orders_gives_the_same_views():
    def scene(points):
        return ball(LESION)(points) + 500 * ball(MIDDLE + [8, 0, 0], 3, 1, 0)(points) + (points - MIDDLE) @ [2, 3, 4]

    shape, spacing, _ = GEOMETRIES["anisotropic"]
    volume = scene_volume(shape, spacing, CANONICAL, scene)
    # Rows stored back to front: row axis reversed, origin at the old last row.
    flipped = Volume(volume.array[:, ::-1, :].copy(), volume.spacing,
                     volume.voxel_to_patient([0, shape[1] - 1, 0]), volume.direction * [1, -1, 1])
    # NIfTI-like axis order (column, row, slice).
    transposed = Volume(volume.array.transpose(2, 1, 0).copy(), volume.spacing[::-1], volume.origin,
                        volume.direction[:, ::-1])
    np.testing.assert_allclose(flipped.voxel_to_patient([3, 4, 5]), volume.voxel_to_patient([3, shape[1] - 5, 5]))
    np.testing.assert_allclose(transposed.voxel_to_patient([3, 4, 5]), volume.voxel_to_patient([5, 4, 3]))
    for planes in PLANE_SETS:
        reference = extract_views(volume, LESION, planes, 25, 0.9, rotation_degrees=30)
        for other in (flipped, transposed):
            np.testing.assert_allclose(extract_views(other, LESION, planes, 25, 0.9, rotation_degrees=30),
                                       reference, atol=1e-3)


def test_adjacent_channels_are_axial_planes_below_at_and_above_the_centre():
    shape = (12, 20, 20)
    volume = Volume(np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None] * 10, shape).copy(),
                    (2.0, 0.8, 0.8), np.array([-5.0, 3.0, -40.0]), CANONICAL)
    at_slice_5 = volume.voxel_to_patient([5, 9.5, 9.5])
    views = extract_views(volume, at_slice_5, "adjacent", 9, 1.0)
    assert views.shape == (1, 9, 9, 3)
    for channel, value in enumerate((40, 50, 60)):  # default gap: the neighbouring slices, feet first
        assert np.all(views[0, ..., channel] == value)
    # A sagittal-stored copy (slices along x, rows along -z): the default gap is still the 2 mm along z.
    sagittal = Volume(volume.array.transpose(2, 0, 1)[:, ::-1, :].copy(), (0.8, 2.0, 0.8),
                      volume.voxel_to_patient([11, 0, 0]), np.column_stack([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    np.testing.assert_allclose(sagittal.voxel_to_patient([2, 1, 3]), volume.voxel_to_patient([10, 3, 2]))
    np.testing.assert_allclose(extract_views(sagittal, at_slice_5, "adjacent", 9, 1.0), views, atol=1e-4)
    wide = extract_views(volume, at_slice_5, "adjacent", 9, 1.0, slice_gap_mm=4.0, rotation_degrees=45)
    assert [float(wide[0, 4, 4, c]) for c in range(3)] == [30.0, 50.0, 70.0]
    between = extract_views(volume, volume.voxel_to_patient([5.5, 9.5, 9.5]), "adjacent", 9, 1.0)
    assert [float(between[0, 4, 4, c]) for c in range(3)] == pytest.approx([45, 55, 65])
    # On any volume the channels are sample_plane's axial planes shifted along z.
    sphere = scene_volume(*GEOMETRIES["oblique"], ball(LESION))
    views = extract_views(sphere, LESION, "adjacent", 21, 0.5, slice_gap_mm=1.5)
    for channel, dz in enumerate((-1.5, 0.0, 1.5)):
        np.testing.assert_array_equal(views[0, ..., channel],
                                      sample_plane(sphere, LESION + [0, 0, dz], [1, 0, 0], [0, 1, 0], 21, 0.5))


def test_outside_pixels_take_the_volume_minimum_or_the_given_fill():
    rng = np.random.default_rng(1)
    volume = Volume(rng.uniform(-500, 900, (10, 10, 10)).astype(np.float32), (1, 1, 1), np.zeros(3), CANONICAL)
    volume.array[3, 3, 3] = -700.0
    corner = volume.voxel_to_patient([0, 0, 0])
    view = sample_plane(volume, corner, [1, 0, 0], [0, 1, 0], 21, 1.0)
    # The view's centre pixel (10, 10) is voxel (0, 0, 0): pixels 10..19 fall on rows / columns 0..9 of slice 0.
    assert np.all(view[:10, :] == -700) and np.all(view[:, :10] == -700)  # before the first row / column
    assert np.all(view[20, :] == -700) and np.all(view[:, 20] == -700)  # past the last one
    np.testing.assert_array_equal(view[10:20, 10:20], volume.array[0])  # inside: the voxels, all above -500
    given = sample_plane(volume, corner, [1, 0, 0], [0, 1, 0], 21, 1.0, fill=7.0)
    assert np.all(given[:10, :] == 7) and np.all(given[20, :] == 7)
    np.testing.assert_array_equal(given[10:20, 10:20], volume.array[0])
    views = extract_views(volume, corner + [0, 0, -50], "orthogonal", 5, 1.0, fill=-3.0)
    assert np.all(views[0] == -3.0)


def test_the_default_fill_scans_the_volume_at_most_once_and_only_for_views_past_its_edge():
    volume = scene_volume(*GEOMETRIES["oblique"], ball(LESION))
    calls = []
    original = volume.intensity_range
    volume.intensity_range = lambda: calls.append(1) or original()
    inside = extract_views(volume, LESION, "ciompi9", 15, 1.0, rotation_degrees=10)
    assert calls == [] and inside.min() == -1000
    edge = extract_views(volume, LESION, "ciompi9", 61, 1.0, rotation_degrees=10)
    assert calls == [1] and np.all(edge[:, 0, 0] == -1000)  # nine views, one scan
    extract_views(volume, LESION, "ciompi9", 61, 1.0, fill=-1000.0)
    assert calls == [1]


# ---------------------------------------------------------------------------------------------- centres


def test_volume_center_and_center_from_voxel():
    volume = Volume(np.zeros((5, 4, 6), np.float32), (2.5, 0.5, 0.7), np.array([10.0, -20.0, 30.0]), CANONICAL)
    # middle index (2, 1.5, 2.5): z = 30 + 2 * 2.5, y = -20 + 1.5 * 0.5, x = 10 + 2.5 * 0.7
    np.testing.assert_allclose(volume_center(volume), [11.75, -19.25, 35.0])
    np.testing.assert_allclose(center_from_voxel(volume, (4, 0, 5)), [13.5, -20.0, 40.0])
    np.testing.assert_allclose(center_from_voxel(volume, [0.5, 3, 0]), [10.0, -18.5, 31.25])
    with pytest.raises(VolumeError) as error:
        center_from_voxel(Volume(volume.array, volume.spacing, volume.origin, CANONICAL, source="scans/ct1"),
                          (5, 0, 0))
    message = str(error.value)
    assert message.startswith("scans/ct1: voxel index (5, 0, 0)")
    assert "5 x 4 x 6" in message and "0-based (slice, row, column)" in message and "tfmed inspect" in message
    with pytest.raises(VolumeError, match=r"index \(0, -1, 0\)"):
        center_from_voxel(volume, (0, -1, 0))
    with pytest.raises(ValueError, match="voxel index must be 3 finite numbers"):
        center_from_voxel(volume, (0, 1))


def test_check_center_inside():
    volume = Volume(np.zeros((10, 20, 20), np.float32), (2.0, 1.0, 1.0), np.array([-10.0, 5.0, 100.0]), CANONICAL,
                    source="scans/ct2")
    check_center_inside(volume, volume_center(volume))
    check_center_inside(volume, [-10.5, 4.5, 99.0])  # the outer corner of voxel (0, 0, 0)
    with pytest.raises(VolumeError) as error:
        check_center_inside(volume, [10.0, -5.0, 100.0], where="lesions.csv row 4")
    message = str(error.value)
    assert message.startswith("scans/ct2: lesions.csv row 4: centre (10, -5, 100) mm is outside the volume")
    assert "x -10.5 .. 9.5, y 4.5 .. 24.5, z 99 .. 119 mm" in message
    assert "ImagePositionPatient" in message and "negate x and y" in message
    with pytest.raises(VolumeError, match=r"^scans/ct2: row 7: centre \(0, 10, 121\) mm is outside"):
        check_center_inside(volume, [0.0, 10.0, 121.0], where="row 7: ")  # a prefix ending in ": " also works
    with pytest.raises(VolumeError, match="z 99 .. 119"):
        check_center_inside(volume, [0.0, 10.0, 121.0])


def test_jitter_center():
    center = np.array([1.0, -2.0, 30.0])
    same = jitter_center(center, 0.0, np.random.default_rng(3))
    np.testing.assert_array_equal(same, center)
    same[0] = 99.0
    assert center[0] == 1.0  # a copy
    first = jitter_center(center, 2.5, np.random.default_rng(3))
    np.testing.assert_array_equal(first, jitter_center(center, 2.5, np.random.default_rng(3)))
    assert not np.array_equal(first, center)
    rng = np.random.default_rng(4)
    moves = np.array([jitter_center(center, 2.5, rng) - center for _ in range(500)])
    assert np.all(np.abs(moves) <= 2.5) and np.all(moves.max(axis=0) > 2.0) and np.all(moves.min(axis=0) < -2.0)
    with pytest.raises(ValueError, match="jitter_mm must be a number of mm >= 0; got -1"):
        jitter_center(center, -1, rng)


# ---------------------------------------------------------------------------------------------- errors


def test_argument_errors_say_what_was_given_and_what_is_allowed():
    volume = Volume(np.zeros((5, 5, 5), np.float32), (1, 1, 1), np.zeros(3), CANONICAL)
    center = volume_center(volume)
    with pytest.raises(ValueError, match="planes must be one of orthogonal, ciompi9, adjacent; got 'axial'"):
        plane_axes("axial")
    with pytest.raises(ValueError, match="planes must be one of"):
        extract_views(volume, center, "nine", 5, 1.0)
    with pytest.raises(ValueError, match="slice_gap_mm applies only to planes='adjacent'; got slice_gap_mm=2.0 "
                                         "with planes='orthogonal'"):
        extract_views(volume, center, "orthogonal", 5, 1.0, slice_gap_mm=2.0)
    with pytest.raises(ValueError, match="slice_gap_mm must be a positive number of mm; got 0"):
        extract_views(volume, center, "adjacent", 5, 1.0, slice_gap_mm=0)
    for size in (0, -3, 2.5, True, "64"):
        with pytest.raises(ValueError, match=r"size must be a whole number of pixels >= 1; got"):
            extract_views(volume, center, "orthogonal", size, 1.0)
    assert extract_views(volume, center, "orthogonal", np.int64(1), 1.0).shape == (3, 1, 1, 1)
    for spacing in (0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="spacing_mm must be a positive number of mm"):
            extract_views(volume, center, "ciompi9", 5, spacing)
    for bad in ([0.0, float("nan"), 1.0], [1.0, 2.0], "centre", [[1, 2, 3]]):
        with pytest.raises(ValueError, match="center_mm must be 3 finite numbers"):
            extract_views(volume, bad, "orthogonal", 5, 1.0)
    with pytest.raises(ValueError, match="rotation_degrees must be a finite number; got nan"):
        extract_views(volume, center, "orthogonal", 5, 1.0, rotation_degrees=float("nan"))
    with pytest.raises(ValueError, match="u and v must be orthonormal"):
        sample_plane(volume, center, [1, 0, 0], [1, 1, 0], 5, 1.0)
    with pytest.raises(ValueError, match="offset_mm must be 3 finite numbers"):
        sample_plane(volume, center, [1, 0, 0], [0, 1, 0], 5, 1.0, offset_mm=[0, 0])
