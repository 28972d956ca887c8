"""Caption terms and Fightin' Words (Monroe, Colaresi & Quinn 2008): which words and bigrams are
over-represented among a feature's captions, judged against the rest of the store.

Each caption group (identical captions) counts once per term, so a repeated word in one caption
or a mirrored copy of an image does not weigh twice.
"""

from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

# Words that describe the medium, not the content.
MEDIUM_WORDS = frozenset("image picture photo stamp png called known kind type".split())
STOPWORDS = frozenset(ENGLISH_STOP_WORDS) | MEDIUM_WORDS
BIGRAM_KEEPS = 0.8  # a bigram replaces a chosen word it contains when its z is at least this share of the word's


def tokens(caption: str) -> list[str | None]:
    """Lower-case alphabetic tokens of two letters or more; stopwords become None (they break bigrams)."""
    return [w if w not in STOPWORDS else None for w in re.findall(r"[a-z]+", caption.lower()) if len(w) >= 2]


def terms(caption: str) -> set[str]:
    """Unigrams and bigrams (two adjacent non-stopword tokens) of one caption."""
    toks = tokens(caption)
    found = {t for t in toks if t}
    found |= {f"{a} {b}" for a, b in zip(toks, toks[1:]) if a and b}
    return found


class TermCounts:
    """Binary group x term counts of a store's captions. `groups[row]` is the row's group."""

    def __init__(self, captions: list[str | None], groups: np.ndarray):
        self.groups = groups
        text_of_group: dict[int, str] = {}
        for caption, group in zip(captions, groups.tolist()):
            text_of_group.setdefault(group, caption or "")
        vocab: dict[str, int] = {}
        rows, cols = [], []
        for group, text in text_of_group.items():
            for term in sorted(terms(text)):
                rows.append(group)
                cols.append(vocab.setdefault(term, len(vocab)))
        self.vocab = np.array(list(vocab), dtype=object)
        n_groups = int(groups.max()) + 1 if len(groups) else 0
        self.matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_groups, len(vocab)))
        self.total = np.asarray(self.matrix.sum(0)).ravel()

    def counts(self, groups: np.ndarray) -> np.ndarray:
        groups = np.unique(np.asarray(groups, dtype=np.int64))
        if len(groups) == 0:
            return np.zeros(len(self.vocab))
        return np.asarray(self.matrix[groups].sum(0)).ravel()


def fightin_words(y_i: np.ndarray, y_j: np.ndarray, prior_strength: float) -> np.ndarray:
    """z-scores of the log-odds ratio of each term between corpus i and corpus j, with an
    informative Dirichlet prior alpha_w = prior_strength * pi_w (pi: the pooled term shares):

    delta_w = log[(y_iw + a_w) / (n_i + a0 - y_iw - a_w)] - log[(y_jw + a_w) / (n_j + a0 - y_jw - a_w)]
    var_w ~= 1 / (y_iw + a_w) + 1 / (y_jw + a_w);  z_w = delta_w / sqrt(var_w). Unseen terms get -inf.
    """
    pooled = y_i + y_j
    alpha = prior_strength * pooled / max(pooled.sum(), 1e-12)
    n_i, n_j = y_i.sum(), y_j.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.log((y_i + alpha) / (n_i + prior_strength - y_i - alpha)) - np.log(
            (y_j + alpha) / (n_j + prior_strength - y_j - alpha)
        )
        z = delta / np.sqrt(1.0 / (y_i + alpha) + 1.0 / (y_j + alpha))
    z[~np.isfinite(z)] = -np.inf
    return z


def choose_terms(z: np.ndarray, y_i: np.ndarray, vocab: np.ndarray, m: int, min_count: int = 2) -> list[str]:
    """Up to `m` terms by z among those seen in at least `min_count` labelling captions (else in
    one); a term whose words are all in terms already chosen is skipped; a bigram replaces a chosen
    word it contains when its z is at least BIGRAM_KEEPS of the word's ("traffic light" over "light")."""
    for needed in (min_count, 1):
        candidates = np.flatnonzero((y_i >= needed) & (z > 0))
        if len(candidates):
            break
    else:
        return []
    chosen: list[tuple[str, float]] = []
    for j in candidates[np.argsort(-z[candidates], kind="stable")][: 5 * m + 10]:
        term, zj = str(vocab[j]), float(z[j])
        words = set(term.split())
        if words <= {w for t, _ in chosen for w in t.split()}:
            continue
        contained = [
            k for k, (t, zt) in enumerate(chosen) if len(words) == 2 and t in words and zj >= BIGRAM_KEEPS * zt
        ]
        if contained:
            chosen[contained[0]] = (term, zj)
        else:
            chosen.append((term, zj))
        if len(chosen) >= m:
            break
    return list(dict.fromkeys(t for t, _ in chosen))[:m]
