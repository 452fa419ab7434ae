"""MovieLens-shaped synthetic data in which both recommender signals are real.

Hidden taste topics drive everything: each user has a topic mixture (theta),
each movie a topic mixture (phi). Users pick movies from their topics (weighted
by a heavy-tailed popularity) or by popularity alone, and rate them higher the
closer phi is to theta. The same phi decides a movie's genres, title words and
the tags users write, so content features and collaborative signal are each
informative and partly complementary (content also covers rarely rated movies).

Shape follows MovieLens: every user has >= 20 ratings with a heavy-tailed
activity, most movies have few ratings, half-star ratings, timestamps,
release years in titles, a few tags, plus provider tables. Deterministic from
the seed. Fully vectorised: the ml32m preset (32M ratings) is built in chunks.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recopt.config import Preset

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western")
PROVIDERS = ("streamflix", "primebox", "cinemaplus", "kidzone", "arthouse", "retrotv")
_SYLLABLES = ("ka", "lo", "mi", "ru", "sen", "tor", "vel", "an", "dri", "ph", "qu", "zen", "bo",
              "ly", "mar", "nes", "os", "pa", "ri", "sta", "ur", "wex", "yo", "gal")
_MIN_RATINGS = 20
_CHUNK = 2_000_000
_T0, _T1 = 820_454_400, 1_696_118_400        # 1996-01-01 .. 2023-10-01 (unix seconds)


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct pronounceable pseudo-words."""
    out: dict[str, None] = {}
    while len(out) < n:
        parts = rng.choice(len(_SYLLABLES), size=(n, 3))
        for row in parts:
            out["".join(_SYLLABLES[j] for j in row)] = None
    return list(out)[:n]


def _unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based: much faster than np.unique's hash path on 10^7 ints;
    polars sorts on every core, ~3.5x numpy's single-threaded sort on 4e7 int64)."""
    keys = pl.Series(keys).sort().to_numpy()
    return keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys


def _dirichlet_rows(rng: np.random.Generator, n: int, k: int, conc: float) -> np.ndarray:
    g = rng.gamma(conc, size=(n, k)).astype(np.float32) + 1e-9
    return g / g.sum(axis=1, keepdims=True)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each entry of `rows`, one category drawn from probs[row] (chunked inverse CDF)."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    out = np.empty(len(rows), dtype=np.int32)
    for s in range(0, len(rows), _CHUNK):
        r = rows[s:s + _CHUNK]
        u = rng.random(len(r), dtype=np.float32)[:, None]
        out[s:s + _CHUNK] = np.minimum((u > cdf[r]).sum(axis=1), probs.shape[1] - 1)
    return out


class _World:
    """The hidden model: topics, movie and user parameters."""

    def __init__(self, p: Preset, rng: np.random.Generator):
        T, n_items, n_users = p.n_topics, p.n_items, p.n_users
        self.topic_share = _dirichlet_rows(rng, 1, T, 2.0)[0]
        self.primary = rng.choice(T, size=n_items, p=self.topic_share).astype(np.int32)
        mix = _dirichlet_rows(rng, n_items, T, 0.2)
        self.phi = 0.6 * np.eye(T, dtype=np.float32)[self.primary] + 0.4 * mix
        self.log_pop = rng.normal(0.0, 2.8, n_items).astype(np.float32)
        self.item_bias = rng.normal(0.0, 0.35, n_items).astype(np.float32)
        self.year = (2023 - np.minimum(rng.exponential(16.0, n_items), 100)).astype(np.int16)
        self.theta = _dirichlet_rows(rng, n_users, T, 0.25)
        self.user_bias = rng.normal(0.0, 0.35, n_users).astype(np.float32)
        extra = rng.lognormal(0.0, 1.3, n_users)
        budget = p.n_ratings - _MIN_RATINGS * n_users
        self.activity = np.minimum(_MIN_RATINGS + np.round(extra * budget / extra.sum()),
                                   n_items // 2).astype(np.int64)
        # p(item | topic) ~ popularity * phi[:, topic]: as in MovieLens, most movies get few ratings
        w = np.exp(self.log_pop - self.log_pop.max())[:, None] * self.phi
        self.topic_item_cdf = np.cumsum(w / w.sum(axis=0, keepdims=True), axis=0).T.copy()
        pop = np.exp(self.log_pop - self.log_pop.max())
        self.pop_cdf = np.cumsum(pop / pop.sum())

    def draw_items(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """One movie per entry of `users`: 80% from a taste topic, 20% by popularity."""
        items = np.empty(len(users), dtype=np.int32)
        by_pop = rng.random(len(users)) < 0.2
        items[by_pop] = np.searchsorted(self.pop_cdf, rng.random(int(by_pop.sum())) * self.pop_cdf[-1])
        taste = np.flatnonzero(~by_pop)
        topics = _sample_rows(rng, self.theta, users[taste])
        for t in range(self.theta.shape[1]):
            sel = taste[topics == t]
            cdf = self.topic_item_cdf[t]
            items[sel] = np.searchsorted(cdf, rng.random(len(sel)) * cdf[-1])
        return np.minimum(items, len(self.phi) - 1)


def _draw_pairs(world: _World, rng: np.random.Generator, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs, about `activity[u]` per user, at least 20 each."""
    target = world.activity
    keys = np.empty(0, dtype=np.int64)
    need = target.copy()
    for round_ in range(8):  # bounded top-up rounds for users whose draws collided
        users = np.repeat(np.arange(len(target), dtype=np.int64), need)
        if not len(users):
            break
        items = world.draw_items(rng, users)
        keys = _unique(np.concatenate([keys, users * n_items + items]))
        have = np.bincount(keys // n_items, minlength=len(target))
        # popular items collide often: ask for more each round (few users are still short)
        need = np.where(have < target, np.ceil((target - have) * 1.3 * 2**round_), 0).astype(np.int64)
    have = np.bincount(keys // n_items, minlength=len(target))
    short = np.flatnonzero(have < _MIN_RATINGS)
    for _ in range(50):  # narrow-taste users in a tiny catalog: fill uniformly, bounded
        if not len(short):
            break
        users = np.repeat(short, 2 * _MIN_RATINGS)
        keys = _unique(np.concatenate([keys, users * n_items + rng.integers(0, n_items, len(users))]))
        have = np.bincount(keys // n_items, minlength=len(target))
        short = np.flatnonzero(have < _MIN_RATINGS)
    return (keys // n_items).astype(np.int32), (keys % n_items).astype(np.int32)


def _ratings(world: _World, rng: np.random.Generator, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    aff = np.empty(len(u), dtype=np.float32)
    for s in range(0, len(u), _CHUNK):
        aff[s:s + _CHUNK] = np.einsum("nt,nt->n", world.theta[u[s:s + _CHUNK]], world.phi[i[s:s + _CHUNK]])
    z = (aff - aff.mean()) / (aff.std() + 1e-9)
    raw = 3.65 + world.item_bias[i] + world.user_bias[u] + 0.9 * z + rng.normal(0, 0.55, len(u))
    return np.clip(np.round(raw * 2) / 2, 0.5, 5.0).astype(np.float32)


def _timestamps(rng: np.random.Generator, u: np.ndarray, n_users: int) -> np.ndarray:
    start = rng.integers(_T0, _T1 - 86_400 * 30, n_users)
    span = np.minimum(rng.exponential(86_400 * 400, n_users), _T1 - start)
    return (start[u] + rng.random(len(u)) * span[u]).astype(np.int64)


def _movies(world: _World, rng: np.random.Generator, n_topics: int) -> pl.DataFrame:
    n_items = len(world.phi)
    topic_genre = _dirichlet_rows(rng, n_topics, len(GENRES), 0.15)
    p_genre = world.phi @ topic_genre
    n_genres = rng.choice([1, 2, 3], size=n_items, p=[0.4, 0.4, 0.2])
    gumbel = np.log(p_genre + 1e-12) - np.log(-np.log(rng.random(p_genre.shape)))
    order = np.argsort(-gumbel, axis=1)
    genres = [[GENRES[g] for g in order[j, :n_genres[j]]] for j in range(n_items)]
    vocab = _words(rng, n_topics * 30 + 200)
    topic_words = np.array(vocab[: n_topics * 30]).reshape(n_topics, 30)
    generic = np.array(vocab[n_topics * 30:])
    n_words = rng.choice([1, 2, 3], size=n_items, p=[0.3, 0.45, 0.25])
    topical = rng.random((n_items, 3)) < 0.7
    tw = topic_words[world.primary[:, None], rng.integers(0, 30, (n_items, 3))]
    gw = generic[rng.integers(0, len(generic), (n_items, 3))]
    words = np.where(topical, tw, gw)
    titles = [" ".join(words[j, :n_words[j]]).title() + f" ({world.year[j]})" for j in range(n_items)]
    return pl.DataFrame({
        "movieId": np.arange(1, n_items + 1, dtype=np.int32),
        "title": titles,
        "year": world.year,
        "genres": genres,
    }, schema={"movieId": pl.Int32, "title": pl.String, "year": pl.Int16, "genres": pl.List(pl.String)})


def _tags(world: _World, rng: np.random.Generator, ratings: pl.DataFrame, n_topics: int) -> pl.DataFrame:
    """About 3% of ratings come with a tag word of the movie's topic."""
    pick = rng.random(ratings.height) < 0.03
    sub = ratings.filter(pick)
    items = sub["movieId"].to_numpy() - 1
    vocab = np.array(_words(np.random.default_rng(rng.integers(1 << 31)), n_topics * 30)).reshape(n_topics, 30)
    topic = np.where(rng.random(len(items)) < 0.85, world.primary[items], rng.integers(0, n_topics, len(items)))
    words = vocab[topic, rng.integers(0, 10, len(items))]  # the 10 most "tag-like" words per topic
    return pl.DataFrame({
        "userId": sub["userId"], "movieId": sub["movieId"], "tag": words,
        "timestamp": sub["timestamp"] + rng.integers(0, 3600, len(items)),
    }, schema={"userId": pl.Int32, "movieId": pl.Int32, "tag": pl.String, "timestamp": pl.Int64})


def _providers(rng: np.random.Generator, n_items: int, n_users: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    item_has = rng.random((n_items, len(PROVIDERS))) < 0.18
    ii, pp = np.nonzero(item_has)
    user_has = rng.random((n_users, len(PROVIDERS))) < 0.3
    uu, up = np.nonzero(user_has)
    names = np.array(PROVIDERS)
    return (pl.DataFrame({"movieId": (ii + 1).astype(np.int32), "provider": names[pp]}),
            pl.DataFrame({"userId": (uu + 1).astype(np.int32), "provider": names[up]}))


def generate(p: Preset, rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """Ratings, movies, tags, providers and user_providers in the canonical schemas."""
    world = _World(p, rng)
    users, items = _draw_pairs(world, rng, p.n_items)
    ratings = pl.DataFrame({
        "userId": users + 1,
        "movieId": items + 1,
        "rating": _ratings(world, rng, users, items),
        "timestamp": _timestamps(rng, users, p.n_users),
    }, schema={"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64})
    providers, user_providers = _providers(rng, p.n_items, p.n_users)
    return {
        "ratings": ratings,
        "movies": _movies(world, rng, p.n_topics),
        "tags": _tags(world, rng, ratings, p.n_topics),
        "providers": providers,
        "user_providers": user_providers,
    }
