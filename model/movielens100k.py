"""MovieLens 100K: a denser MovieLens release, for benchmarks that need real time order.

The project's MovieLens (``model.data.load_movielens``) spreads 100,004 ratings over
twenty years, 12.6 a day: any stretch of its time order long enough to judge spans
years, and so holds users who joined years apart. MovieLens 100K holds 100,000 ratings
by 943 users on 1,682 movies in seven months of 1997-98 (about 470 a day), so a
stretch of a few thousand events spans days.

It is read from the wheel of RecBole on PyPI (``recbole/dataset_example/ml-100k``),
fetched once with pip into a cache folder, checked against its SHA-256, and read as a
zip: RecBole is never installed or imported (its dependencies are heavy), and the data
is not redistributed by this project. The GroupLens terms apply to it: research use.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from model.data import Interactions, interactions_from_frame

WHEEL = "recbole-1.2.1-py3-none-any.whl"
REQUIREMENT = "recbole==1.2.1"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RATINGS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
MOVIES_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"
UNKNOWN_GENRE = "unknown"  # ml-100k's "no genre" marker


def fetch_wheel(cache: Path) -> Path:
    """The RecBole wheel under ``cache``, downloaded by pip (no dependencies) if absent.

    Raises ``RuntimeError`` when pip cannot fetch it and ``ValueError`` when the file's
    SHA-256 is not the pinned one (a partial or substituted download is never read).
    """
    cache = Path(cache)
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--quiet", "--dest", scratch, REQUIREMENT],
                capture_output=True, text=True, check=False,
            )
            fetched = Path(scratch) / WHEEL
            if done.returncode != 0 or not fetched.exists():
                raise RuntimeError(f"pip could not fetch {REQUIREMENT} for MovieLens 100K: "
                                   f"{done.stderr.strip()[-500:] or 'no wheel came back'}")
            verify(fetched)
            fetched.replace(wheel)
    verify(wheel)
    return wheel


def verify(wheel: Path) -> None:
    digest = hashlib.sha256(Path(wheel).read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel}: SHA-256 {digest} is not the pinned {WHEEL_SHA256}")


def ratings_frame(wheel: Path):
    """The ratings joined with their movies, in the columns ``interactions_from_frame`` reads."""
    import pandas as pd  # local import: only the data path needs pandas

    with zipfile.ZipFile(wheel) as archive:
        ratings = pd.read_csv(io.BytesIO(archive.read(RATINGS_MEMBER)), sep="\t")
        movies = pd.read_csv(io.BytesIO(archive.read(MOVIES_MEMBER)), sep="\t", quoting=3)
    # RecBole's headers are "name:type"; the columns are user, item, rating, timestamp and
    # item, title, release year, genres (space-separated: no ml-100k genre holds a space)
    ratings.columns = ["userId", "movieId", "rating", "timestamp"]
    movies = movies.iloc[:, [0, 1, 3]]
    movies.columns = ["movieId", "title", "genres"]
    genres = movies["genres"].fillna("").str.split().map(
        lambda names: "|".join(n for n in names if n != UNKNOWN_GENRE))
    movies = movies.assign(genres=genres, title=movies["title"].fillna("").astype(str))
    frame = ratings.merge(movies, on="movieId", how="left", validate="many_to_one")
    if frame["title"].isna().any():
        raise ValueError("ml-100k ratings name movies its movie list lacks")
    return frame.assign(timestamp=frame["timestamp"].astype("int64"))


def load_movielens_100k(cache: Path) -> Interactions:
    """MovieLens 100K as per-user timelines (``model.data.Interactions``)."""
    return interactions_from_frame(ratings_frame(fetch_wheel(cache)))
