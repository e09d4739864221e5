"""Fixtures of the coursework tests: one student copy and teacher bundle for the module."""

from __future__ import annotations

import shutil

import pytest
from coursework_helpers import make_copy


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(stubbed student copy, teacher bundle) of every exercise, made once per module."""
    base = tmp_path_factory.mktemp("made")
    make_copy(base / "student", teacher=base / "teacher")
    return base / "student", base / "teacher"


@pytest.fixture(scope="module")
def solved(made, tmp_path_factory):
    """A copy of the student copy with the teacher's solutions put back."""
    student, teacher = made
    dest = tmp_path_factory.mktemp("solved") / "student"
    shutil.copytree(student, dest)
    for f in (teacher / "solutions" / "minunet" / "ops").glob("*.py"):
        shutil.copyfile(f, dest / "minunet" / "ops" / f.name)
    return dest
