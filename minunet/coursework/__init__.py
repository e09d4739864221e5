"""Gradient-checking coursework: student copies whose own ops train the U-Net, and an
autograder that names the mistake (docs/TEACHERS.md).

    regions.py     the solution regions of minunet/ops (# BEGIN SOLUTION <op>.<part>)
    make.py        the student copy and the teacher bundle
    checks.py      the public checks; hidden.py the hidden ones (never in a student copy)
    bundle.py      inputs, expected arrays and wrong versions' outputs, in one .npz
    mistakes.py    the catalogue of typical mistakes and their hints
    grader.py      grading one namespace of ops: tests and diagnoses
    worker.py      ... in a subprocess per op; grade.py runs them, reports, results.json
    autograder.py  the Gradescope autograder zip
    cli.py         python -m minunet.coursework {make, grade, autograder-zip, regions}

Nothing here is imported by the rest of minunet.
"""
