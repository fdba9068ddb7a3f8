"""``Suite``: the problems of one experiment, whatever their source (the embedded synthetic suite or the user's
files): a training pool, validation sets and test splits, and which test families are targeted."""

from __future__ import annotations

from dataclasses import dataclass

from cropi.tasks.problem import Problem


@dataclass
class Suite:
    pool: list[Problem]
    validation: dict[str, list[Problem]]  # validation set name -> its problems; each one targets a test family
    test: dict[str, list[Problem]]  # family -> its test split
    targeted: list[str]  # test families with a validation set of the same name
    untargeted: list[str]

    def test_problems(self) -> list[Problem]:
        return [p for fam in self.test for p in self.test[fam]]
