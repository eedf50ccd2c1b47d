"""The fast NER path (`[pii] fast_ner = true`, the default): spaCy's NER network run with numpy's BLAS,
only the lexeme attributes something reads, embeddings kept per distinct token, the window encoder and
the greedy decoder run for a whole batch at once in numpy. Same entities as spaCy's own loop (a test compares
the two paths on real text); with `fast_ner = false` spaCy's `nlp.pipe` runs unchanged, which is
what to turn to when a spaCy upgrade changes the internals this path relies on."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from tasks.pii.config import NER_BATCH_CHARS
from tasks.pii.tok2vec import TokenEmbeddings, WindowEncoder


def lexeme_attrs_used(nlp, names: list[str]) -> None:
    """Compute only the lexeme attributes something here reads when spaCy meets a new word.

    Every word spaCy has not seen becomes a lexeme, and spaCy then calls a Python function for
    each of 23 attributes (like_url, is_currency, ...). Tokenizing the 1,500 labeled texts meets
    4,700 new words and takes 0.19 s, against 0.05 s for the same texts seen before; computing
    only what is read takes it to 0.145 s (about 30 -> 20 µs a new word). Read are: the NER
    network's feature columns (NORM, PREFIX, SUFFIX, SHAPE in spaCy's models), IS_SPACE by the
    transition system, IS_STOP and IS_PUNCT by Presidio's context enhancer, and LOWER, which
    NORM falls back on. The rest keep their defaults (False) in this private NER-only pipeline."""
    from spacy.attrs import IDS, IS_PUNCT, IS_SPACE, IS_STOP, LOWER, NORM, PREFIX, SHAPE, SUFFIX

    used = {LOWER, NORM, PREFIX, SUFFIX, SHAPE, IS_SPACE, IS_STOP, IS_PUNCT}
    for name in names:
        for node in nlp.get_pipe(name).model.walk():
            for column in node.attrs.get("columns", ()) if node.name == "extract_features" else ():
                used.add(IDS[column.upper()] if isinstance(column, str) else column)
    getters = nlp.vocab.lex_attr_getters
    nlp.vocab.lex_attr_getters = {attr: get for attr, get in getters.items() if attr in used}


def numpy_matmul(nlp, names: list[str]) -> None:
    """Let the NER network multiply matrices with numpy's BLAS instead of thinc's bundled BLIS.

    BLIS picks its kernels by CPU model and falls back to generic C on CPUs it does not know
    (this project's AMD EPYC CI machine among them): 26 GFLOP/s there against numpy's 75, and
    NER is mostly matrix products. The results are the same entities. Models on a GPU keep
    their own ops.
    """
    from thinc.api import NumpyOps

    ops = NumpyOps(use_blis=False)
    for name in names:
        for node in nlp.get_pipe(name).model.walk():
            if type(node.ops) is NumpyOps:
                node.ops = ops


class GreedyNer:
    """spaCy's greedy NER decoder, run for a whole batch at once in numpy.

    spaCy decodes NER one token at a time per document in a C loop; on this project's
    machines that loop is over two thirds of NER's time, most of it spent taking and dropping
    Python's GIL for every token. Here the move of every token of the batch with no entity open
    (where the features are the token alone) is decided at once, and only the tokens inside an
    entity a step at a time, for every document at once. It is the same network and the same transition
    system (BILUO, with spaCy's rules for which move is valid: no entity begins on
    whitespace or runs across a sentence start), so the entities are the same; the tests
    check that against spaCy on real text. Models this does not cover (beam search, other
    feature sets, a shared embedding layer) use spaCy's own loop.

    The embedding layer's output for a token depends on the token alone (its NORM, PREFIX,
    SUFFIX and SHAPE), so it is kept per distinct token (`TokenEmbeddings`): a fifth of the
    network's arithmetic that is done once per word instead of once per occurrence.
    """

    def __init__(self, ner):
        model = ner.model
        self.tok2vec, self.lower, upper = model.layers
        self.embeddings = TokenEmbeddings.for_tok2vec(self.tok2vec)
        self.encoder = WindowEncoder.for_tok2vec(self.tok2vec) if self.embeddings is not None else None
        self.weights_t, self.bias = upper.get_param("W").T.copy(), upper.get_param("b")
        self.lower_bias = self.lower.get_param("b")
        _, n_o, n_p, n_i = self.lower.get_param("W").shape
        # per feature slot (the token, the entity's first token, the token before): its weights and padding row
        self.slot_weights = [np.ascontiguousarray(w.reshape(n_o * n_p, n_i)) for w in self.lower.get_param("W")]
        self.slot_pads = self.lower.get_param("pad")[0]
        self.unseen = sorted(model.attrs.get("unseen_classes") or ())
        names = [ner.moves.get_class_name(i) for i in range(ner.moves.n_moves)]
        moves = [name.split("-", 1)[0] for name in names]
        labels = [name.split("-", 1)[1] if "-" in name else "" for name in names]
        label_ids = {label: n for n, label in enumerate(sorted(set(labels) - {""}), start=1)}
        self.label_id = np.array([label_ids.get(label, 0) for label in labels])
        labeled = self.label_id > 0
        move = {m: np.array([mv == m for mv in moves]) & (labeled if m in "BILU" else True) for m in "BILUO"}
        self.id_label = {n: label for label, n in label_ids.items()}
        # Which moves are valid, by the open entity's label (0: none) and the token's situation
        # (bit 0: last token of the doc, bit 1: the next token starts a sentence, bit 2: whitespace).
        n_labels = len(label_ids) + 1
        self.valid = np.zeros((n_labels, 8, len(names)), dtype=bool)
        for label in range(n_labels):
            for flags in range(8):
                last, blocked, on_space = bool(flags & 1), bool(flags & 2) and not flags & 1, bool(flags & 4)
                same = self.label_id == label
                if label == 0:
                    self.valid[label, flags] = ((move["B"] & (not last and not blocked and not on_space))
                                                | (move["U"] & (not on_space)) | move["O"])
                else:
                    self.valid[label, flags] = ((move["I"] & (not last and not blocked) & same)
                                                | (move["L"] & same))
        self.begins, self.ends = move["B"], move["L"] | move["U"]

    @classmethod
    def for_pipeline(cls, nlp):
        if nlp.pipe_names != ["ner"]:
            return None
        ner = nlp.get_pipe("ner")
        model = ner.model
        if (type(ner).__name__ != "EntityRecognizer" or type(ner.moves).__name__ != "BiluoPushDown"
                or ner.cfg.get("beam_width", 1) != 1 or len(model.layers) != 3 or not model.attrs.get("has_upper")
                or model.layers[1].name != "precomputable_affine" or model.layers[1].get_dim("nF") != 3
                or model.layers[1].get_dim("nP") < 2 or type(model.ops).__name__ != "NumpyOps"):
            return None
        return cls(ner)

    def _tok2vec(self, docs, features):
        if self.embeddings is None:
            return self.tok2vec.predict(docs)
        embed_encode, *rest = self.tok2vec.layers
        lengths = [len(d) for d in docs]
        if self.encoder is None:
            encoded = embed_encode.layers[1].predict(np.split(self.embeddings(features), np.cumsum(lengths)[:-1]))
        else:
            encoded = self.encoder(*self.embeddings.lookup(features), lengths)  # one array: no list2array
            rest = [layer for layer in rest if layer.name != "list2array"]
        for layer in rest:  # list2array, linear
            encoded = layer.predict(encoded)
        return encoded

    def __call__(self, docs) -> None:
        """Set each doc's entities (docs fresh from the tokenizer)."""
        from spacy.tokens import Span

        docs = [d for d in docs if len(d)]
        if not docs:
            return
        lengths = np.array([len(d) for d in docs])
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))  # tokens are numbered across the batch
        # Row 0 of the precomputed features is padding; token k of the batch is row k + 1.
        columns = ["IS_SPACE", "SENT_START", *(self.embeddings.columns if self.embeddings else ())]
        attrs = np.concatenate([d.to_array(columns) for d in docs])  # uint64: SENT_START's -1 wraps
        tokvecs = self._tok2vec(docs, attrs[:, 2:])
        # The lower layer for every token in the first slot; the other two are read only inside entities
        c0, c1, c2 = (_SlotRows(tokvecs, w, pad, every=(n == 0)) for n, (w, pad) in
                      enumerate(zip(self.slot_weights, self.slot_pads)))
        space, sent_start = attrs[:, 0] == 1, attrs[:, 1] == 1
        flags = space.astype(np.int64) * 4 + np.append(sent_start[1:], False) * 2
        last = offsets + lengths - 1
        flags[last] = flags[last] & 4 | 1  # the last token of a doc (the next doc's start does not block it)
        # With no entity open, the features are the token and two padding rows: every token's move in that
        # state is decided at once. Only inside an entity does a move depend on the one before.
        hidden = c0.all[1:] + c1.pad
        hidden += c2.pad
        closed = self._moves(hidden, np.zeros(len(flags), dtype=np.int64), flags)
        entities = self._entities_from(closed, offsets, lengths, flags, c0, c1, c2)
        doc_of = np.searchsorted(offsets, entities[:, 0], side="right") - 1
        found: list[list] = [[] for _ in docs]
        for d, (s, e, lab) in zip(doc_of.tolist(), entities.tolist()):
            found[d].append((s - int(offsets[d]), e - int(offsets[d]), lab))
        for doc, ents in zip(docs, found):
            doc.set_ents([Span(doc, s, e, label=self.id_label[lab]) for s, e, lab in sorted(ents)], default="outside")

    def _moves(self, hidden, label, flags):
        """The best valid move for each row of features (the lower layer's output summed, before its bias),
        given the open entity's label (0: none) and the token's flags."""
        hidden += self.lower_bias
        pieces_max = np.maximum(hidden[..., 0], hidden[..., 1]) if hidden.shape[-1] == 2 else hidden.max(axis=2)
        scores = pieces_max @ self.weights_t
        scores += self.bias
        if self.unseen:
            scores[:, self.unseen] = scores.min(axis=1, keepdims=True)
        scores[~self.valid[label, flags]] = -np.inf
        return scores.argmax(axis=1)

    def _entities_from(self, closed, offsets, lengths, flags, c0, c1, c2) -> np.ndarray:
        """(start, end, label) of every entity, tokens numbered across the batch. `closed`: each token's move
        when no entity is open. A document is read from its start: tokens take their `closed` move until one
        begins an entity, whose next tokens are decided one step at a time (for every document with an open
        entity at once) until it ends; the token after it takes its `closed` move again, and so on."""
        ends = offsets + lengths
        begin_at = np.flatnonzero(self.begins[closed])  # where an entity would begin if no entity were open there
        spans = []  # (start, end, label) of entities of more than one token
        # each document's first begin; then one step per round for every document inside an entity
        doc, start = _next_begin(begin_at, offsets, ends)
        label = self.label_id[closed[start]]
        t = start + 1
        while len(doc):
            hidden = c0.all[t + 1] + c1[start + 1]
            hidden += c2[t]  # the token before t (row t)
            move = self._moves(hidden, label, flags[t])
            done = self.ends[move]
            if done.any():
                spans.append(np.stack([start[done], t[done] + 1, label[done]], axis=1))
                # the next begin after the entity, if in the same document
                found, begins = _next_begin(begin_at, t[done] + 1, ends[doc[done]])
                reopened = np.flatnonzero(done)[found]
                start[reopened] = begins
                label[reopened] = self.label_id[closed[start[reopened]]]
                t[reopened] = start[reopened]
                keep = ~done
                keep[reopened] = True
                doc, start, label, t = doc[keep], start[keep], label[keep], t[keep]
            t = t + 1
        multi = np.concatenate(spans) if spans else np.zeros((0, 3), dtype=np.int64)
        # single-token entities (U) where no longer entity covers the token
        inside = np.zeros(len(closed) + 1, dtype=np.int64)
        np.add.at(inside, multi[:, 0], 1)
        np.add.at(inside, multi[:, 1], -1)
        covered = np.cumsum(inside)[:-1] > 0
        units = np.flatnonzero(self.ends[closed] & ~self.begins[closed] & ~covered)
        single = np.stack([units, units + 1, self.label_id[closed[units]]], axis=1)
        return np.concatenate([multi, single]).astype(np.int64)


class _SlotRows:
    """The lower layer's output for one feature slot of spaCy's parser (PrecomputableAffine: the token's
    vector times the slot's weights; row 0 the slot's padding, token k row k + 1), for every token (`all`)
    or only the rows read (`rows[k]`). Entities are a few tokens in a hundred, and spaCy's layer takes all
    three slots for every token. Products of fewer than 64 rows are taken on 64 (the rest discarded): BLAS
    takes other kernels for a few rows, whose floats differ in the last bits from the full product's."""

    MIN_ROWS = 64

    def __init__(self, tokvecs: np.ndarray, weights: np.ndarray, pad: np.ndarray, every: bool):
        self.tokvecs, self.weights, self.pad = tokvecs, weights, pad
        if every:
            self.all = np.empty((len(tokvecs) + 1, *pad.shape), dtype=np.float32)
            self.all[0] = pad
            self.all[1:] = (tokvecs @ weights.T).reshape(len(tokvecs), *pad.shape)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        take = np.zeros(max(n, self.MIN_ROWS), dtype=np.intp)
        take[:n] = np.maximum(rows - 1, 0)
        out = (self.tokvecs[take] @ self.weights.T)[:n].reshape(n, *self.pad.shape)
        out[rows == 0] = self.pad
        return out


def _next_begin(begin_at: np.ndarray, at: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `at`, the first of the sorted `begin_at` at or after it if before its `limit`:
    (which of `at` have one, those begins)."""
    i = np.searchsorted(begin_at, at)
    has = np.flatnonzero(i < len(begin_at))
    has = has[begin_at[i[has]] < limit[has]]
    return has, begin_at[i[has]]


@lru_cache(maxsize=4)
def decoder(nlp) -> GreedyNer | None:
    """One decoder per pipeline, so that its token embeddings outlive a call."""
    return GreedyNer.for_pipeline(nlp)


class ChunkTokenizer:
    """spaCy's tokenizer with its cache of whitespace-delimited chunks filled, so that a chunk met before is
    not split into prefixes, infixes and suffixes again: the same tokens, 5-7x faster on prose seen before.

    spaCy caches a chunk's tokens only until the document meets its first special case ("n't", "'s", "a.m."):
    a flag set for the whole document (spaCy issue #1250) stops caching every chunk after it, and the cache
    stops growing at 10,000 chunks. Prose has special cases in nearly every document, so 30% of chunks missed
    on text read before. A chunk's tokens depend on the chunk alone, so each chunk not met before is tokenized
    on its own first (where no earlier special case stops its caching), and the documents then find their
    chunks cached. Chunks that are special cases themselves stay uncached, as in spaCy. Memory stays bounded:
    past `limit` chunks the cache starts over."""

    def __init__(self, nlp, limit: int = 200_000):
        self.nlp, self.tokenizer, self.limit = nlp, nlp.tokenizer, limit
        self.seen: set[str] = set()
        self.works = hasattr(self.tokenizer, "max_cache_size") and hasattr(self.tokenizer, "_flush_cache")
        if self.works:
            self.tokenizer.max_cache_size = max(self.tokenizer.max_cache_size, limit)

    def __call__(self, texts: list[str]) -> list:
        if self.works:
            new = set()
            for text in texts:
                new.update(text.split())  # spaCy's chunks: runs of characters that are not str.isspace()
            new -= self.seen
            if len(self.seen) + len(new) > self.limit:
                self.tokenizer._flush_cache()
                self.seen.clear()
                if len(new) > self.limit:  # the rest are tokenized in their documents, as spaCy does
                    new = set(itertools.islice(new, self.limit))
            tokenize = self.tokenizer
            for chunk in new:
                tokenize(chunk)
            self.seen |= new
        return [self.nlp.make_doc(text) for text in texts]


@lru_cache(maxsize=4)
def chunk_tokenizer(nlp) -> ChunkTokenizer:
    return ChunkTokenizer(nlp)


def ner_docs(nlp, texts, batch_size: int, fast: bool = True):
    """Docs with their entities, as `nlp.pipe` gives them, in batches of at most `batch_size`
    documents and NER_BATCH_CHARS characters. NER takes about 3 GB per million characters of a
    batch: 256 pieces of long books at once would take tens of gigabytes. `fast`: the batched
    numpy decoder where the model allows it; else spaCy's own loop.
    """
    batch_decoder = decoder(nlp) if fast else None
    tokenize = chunk_tokenizer(nlp) if batch_decoder is not None else None
    for batch in batches(texts, batch_size, NER_BATCH_CHARS):
        if batch_decoder is None:
            yield from nlp.pipe(batch, batch_size=len(batch))
            continue
        docs = tokenize(batch)
        batch_decoder(docs)
        yield from docs


def batches(texts, max_items: int, max_chars: int):
    batch, chars = [], 0
    for text in texts:
        if batch and (len(batch) >= max_items or chars + len(text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += len(text)
    if batch:
        yield batch
