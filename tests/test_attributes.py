import numpy as np
import pytest

from tfmarket.attributes import (
    COLUMNS,
    HEADS,
    columns_to_targets,
    probabilities_to_targets,
    targets_to_columns,
)


def test_columns_follow_the_course_csv_header():
    header = ("id,age,backpack,bag,handbag,clothes,down,up,hair,hat,gender,upblack,upwhite,upred,"
              "uppurple,upyellow,upgray,upblue,upgreen,downblack,downwhite,downpink,downpurple,"
              "downyellow,downgray,downblue,downgreen,downbrown")
    assert ("id",) + COLUMNS == tuple(header.split(","))


def test_round_trip_and_no_colour():
    rows = np.ones((3, 27), int)
    rows[:, 0] = [1, 3, 4]
    rows[0, COLUMNS.index("upred")] = 2
    rows[1, COLUMNS.index("downbrown")] = 2
    rows[2, COLUMNS.index("hat")] = 2
    targets = columns_to_targets(rows)
    assert targets["age"].tolist() == [0, 2, 3]
    assert targets["upper_color"].tolist() == [2, 8, 8]  # 8 = "none" (no colour marked)
    assert targets["lower_color"].tolist() == [9, 8, 9]
    assert targets["hat"].tolist() == [0, 0, 1]
    np.testing.assert_array_equal(targets_to_columns(targets), rows)


def test_invalid_rows_are_rejected():
    rows = np.ones((1, 27), int)
    with pytest.raises(ValueError, match="age"):
        columns_to_targets(rows * 0)
    rows[0, COLUMNS.index("upred")] = 2
    rows[0, COLUMNS.index("upblue")] = 2
    with pytest.raises(ValueError, match="more than one upper color"):
        columns_to_targets(rows)


def test_probabilities_to_targets():
    probs = {h: np.full((2, n), 1.0 / n) if n > 1 else np.array([[0.2], [0.7]])
             for h, n in HEADS.items()}
    probs["age"] = np.array([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]])
    out = probabilities_to_targets(probs)
    assert out["age"].tolist() == [2, 0]
    assert out["hat"].tolist() == [0, 1]
