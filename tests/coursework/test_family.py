"""The U-Net family's exercises (BatchNorm, the padded/strided conv): handed out when asked for,
never shown by the other ops' written code, graded, and their typical mistakes named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from coursework_helpers import ROOT, make_copy

from minunet.coursework import grade, make, tutorials
from minunet.coursework.checks import FAMILY_OPS, UNET_OPS
from minunet.coursework.regions import parse_dir, region_code, solution_lines

FAMILY_REGIONS = {"batchnorm2d.forward", "batchnorm2d.backward", "conv2d_general.im2col",
                  "conv2d_general.col2im", "conv2d_general.forward", "conv2d_general.backward"}


def _code() -> dict[str, str]:
    regions = parse_dir(ROOT / "minunet" / "ops")
    out = {}
    for path in {r.path for r in regions}:
        out |= region_code(Path(path).read_text(), [r for r in regions if r.path == path])
    return out


def test_the_default_assignment_is_the_unets_and_the_familys_are_handed_out_when_named():
    default = make.plan(ROOT, None, "both", 0, 1)
    assert {r.op for r in default.regions} == set(UNET_OPS) and len(default.regions) == 16
    assert default.ops == list(UNET_OPS)
    bn = make.plan(ROOT, ["batchnorm2d"], "both", 0, 1)
    assert [r.id for r in bn.regions] == ["batchnorm2d.forward", "batchnorm2d.backward"]
    conv = make.plan(ROOT, ["conv2d_general"], "forward", 0, 1)
    assert [r.id for r in conv.regions] == ["conv2d_general.im2col", "conv2d_general.forward"]
    both = make.plan(ROOT, list(FAMILY_OPS), "both", 0, 1)
    assert {r.id for r in both.regions} == FAMILY_REGIONS


def test_written_code_of_the_other_group_that_shows_a_handed_out_region_is_withheld():
    """conv_general's im2col generalises conv.py's: a copy that hands out conv2d.im2col
    must not keep im2col_general written (and the other way round); regions that show
    nothing handed out stay written."""
    regions, code = parse_dir(ROOT / "minunet" / "ops"), _code()
    unet = make.withheld_regions(regions, {"conv2d.im2col", "conv2d.col2im"}, code)
    assert {"conv2d_general.im2col", "conv2d_general.col2im"} <= set(unet)
    assert not any(r.startswith("batchnorm2d") for r in unet)
    family = make.withheld_regions(regions, {"conv2d_general.im2col"}, code)
    assert "conv2d.im2col" in family
    assert make.withheld_regions(regions, {"batchnorm2d.forward", "batchnorm2d.backward"},
                                 code) == {}  # nothing of the U-Net's shows BatchNorm
    assert make.withheld_regions(regions, {"relu.forward"}, code) == {}


def test_a_unet_copy_keeps_no_written_twin_of_its_im2col(tmp_path):
    """The leak rule with regions in conv_general.py: hand out conv2d.im2col, and the copy's
    conv_general.py holds neither a line of it nor code like it."""
    make_copy(tmp_path / "s", ops=["conv2d"])
    text = (tmp_path / "s" / "minunet" / "ops" / "conv_general.py").read_text()
    assert "TODO(conv2d_general.im2col): withheld" in text
    assert "not part of this assignment, but its code would show" in text
    conv = ROOT / "minunet" / "ops" / "conv.py"
    handed = [r for r in parse_dir(ROOT / "minunet" / "ops") if r.op == "conv2d"]
    secret = region_code(conv.read_text(), handed)
    assert tutorials.reveals(text, solution_lines(conv.read_text(), handed), set(),
                             secret) == ""
    assert "Also stubbed, not graded" in (tmp_path / "s" / "ASSIGNMENT.md").read_text()


# A student's BatchNorm and padded/strided conv with one typical mistake each, planted in
# the teacher's solutions as a student would write it: (file, the right line, the wrong
# line, the mistake the grader must name).
PLANTED = {
    "batchnorm2d.backward_no_stat_paths": (
        "norm.py", "dx = inv_std * (g - g_mean - xhat * proj)", "dx = inv_std * g"),
    "batchnorm2d.unbiased_variance": (
        "norm.py", "var = x.var(axis=axes)", "var = x.var(axis=axes, ddof=1)"),
    "batchnorm2d.batch_stats_in_eval": (
        "norm.py", "mu, var = running_mean, running_var",
        "mu, var = x.mean(axis=axes), x.var(axis=axes)"),
    "conv2d_general.col2im_stride": (
        "conv_general.py",
        "dpad[:, :, i : i + s * (Ho - 1) + 1 : s, j : j + s * (Wo - 1) + 1 : s] += c6[:, i, j]",
        "dpad[:, :, i : i + Ho, j : j + Wo] += c6[:, i, j]"),
    "conv2d_general.im2col_padding_offset": (
        "conv_general.py", "xpad = xp.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x",
        "xpad = xp.pad(x, ((0, 0), (0, 0), (0, 2 * p), (0, 2 * p))) if p else x"),
}


@pytest.fixture(scope="module")
def family_made(tmp_path_factory):
    """A teacher's assignment of both family exercises: (student copy, teacher bundle)."""
    base = tmp_path_factory.mktemp("family")
    make_copy(base / "student", ops=list(FAMILY_OPS), teacher=base / "teacher")
    return base / "student", base / "teacher"


def _plant(student: Path, teacher: Path, dest: Path, mistake: str | None) -> Path:
    shutil.copytree(student, dest)
    for f in ("norm.py", "conv_general.py"):
        shutil.copyfile(teacher / "solutions" / "minunet" / "ops" / f,
                        dest / "minunet" / "ops" / f)
    if mistake:
        name, right, wrong = PLANTED[mistake]
        path = dest / "minunet" / "ops" / name
        text = path.read_text()
        assert text.count(right) == 1
        path.write_text(text.replace(right, wrong))
    return dest


def test_the_family_copy_stubs_its_exercises_and_its_solutions_get_full_marks(family_made,
                                                                              tmp_path):
    student, teacher = family_made
    g = grade.run(student, ops=list(FAMILY_OPS))
    assert g.graded() and not any(r.passed for r in g.graded())
    assert {r.diagnosis for r in g.graded()} <= {"not_implemented", "forward_first", "needs"}
    solved = _plant(student, teacher, tmp_path / "solved", None)
    g = grade.run(solved, hidden=teacher / "hidden.npz")
    assert {r.op for r in g.results} == set(FAMILY_OPS)  # no U-Net check in this assignment
    assert g.all_passed, [(r.check, r.input, r.diagnosis) for r in g.results if not r.passed]
    assert set(g.graded_regions) == FAMILY_REGIONS


@pytest.mark.parametrize("mistake", sorted(PLANTED))
def test_a_planted_family_mistake_is_caught_and_named(mistake, family_made, tmp_path):
    """Through the real grader (worker processes), public and hidden checks alike."""
    student, teacher = family_made
    copy = _plant(student, teacher, tmp_path / "s", mistake)
    op = mistake.split(".")[0]
    g = grade.run(copy, hidden=teacher / "hidden.npz", ops=[op])
    for hidden in (False, True):
        failed = [r for r in g.graded(hidden) if not r.passed]
        assert failed, f"{mistake} passes every {'hidden' if hidden else 'public'} check"
        assert mistake in {r.diagnosis for r in failed}
    assert mistake in grade.report(g)
