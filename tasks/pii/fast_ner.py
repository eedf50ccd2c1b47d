"""The fast NER path (`[pii] fast_ner = true`, the default): spaCy's NER network run with numpy's BLAS,
only the lexeme attributes something reads, and the greedy decoder run for a whole batch at once in
numpy with embeddings kept per distinct token. Same entities as spaCy's own loop (a test compares
the two paths on real text); with `fast_ner = false` spaCy's `nlp.pipe` runs unchanged, which is
what to turn to when a spaCy upgrade changes the internals this path relies on."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tasks.pii.config import NER_BATCH_CHARS


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
    Python's GIL for every token. Here each step decides the next token of every document in
    the batch with a few array operations. It is the same network and the same transition
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
        self.weights, self.bias = upper.get_param("W"), upper.get_param("b")
        self.lower_bias = self.lower.get_param("b")
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
        embedded = self.embeddings(features)
        lengths = np.cumsum([len(d) for d in docs])[:-1]
        encoded = embed_encode.layers[1].predict(np.split(embedded, lengths))
        for layer in rest:  # list2array, linear
            encoded = layer.predict(encoded)
        return encoded

    def __call__(self, docs) -> None:
        """Set each doc's entities (docs fresh from the tokenizer)."""
        from spacy.tokens import Span

        order = sorted((d for d in docs if len(d)), key=len, reverse=True)
        if not order:
            return
        lengths = np.array([len(d) for d in order])
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        # Row 0 of the precomputed features is padding; token k of the batch is row k + 1.
        columns = ["IS_SPACE", "SENT_START", *(self.embeddings.columns if self.embeddings else ())]
        attrs = np.concatenate([d.to_array(columns) for d in order])  # uint64: SENT_START's -1 wraps
        cached = self.lower.predict(self._tok2vec(order, attrs[:, 2:]))
        space, sent_start = attrs[:, 0] == 1, attrs[:, 1] == 1
        next_sent_start = np.append(sent_start[1:], False)
        flags = space.astype(np.int64) * 4 + next_sent_start * 2
        last = offsets + lengths - 1
        flags[last] = flags[last] & 4 | 1  # the last token of a doc (the next doc's start does not block it)
        k = n = len(order)
        open_label = np.zeros(n, dtype=np.int64)  # 0: no entity open
        open_start = np.zeros(n, dtype=np.int64)
        found: list[list] = [[] for _ in order]
        weights_t, bias, lower_bias = self.weights.T.copy(), self.bias, self.lower_bias
        c0, c1, c2 = cached[:, 0], cached[:, 1], cached[:, 2]
        for t in range(int(lengths[0])):
            while lengths[k - 1] <= t:  # documents are longest first: the first k are longer than t
                k -= 1
            b0 = offsets[:k] + t
            label, start = open_label[:k], open_start[:k]
            is_open = label > 0
            # features: the token, the open entity's first token and the token before B0 (row 0: none)
            hidden = c0[b0 + 1] + c1[np.where(is_open, offsets[:k] + start + 1, 0)] + c2[np.where(is_open, b0, 0)]
            hidden += lower_bias
            pieces_max = np.maximum(hidden[..., 0], hidden[..., 1]) if hidden.shape[-1] == 2 else hidden.max(axis=2)
            scores = pieces_max @ weights_t + bias
            if self.unseen:
                scores[:, self.unseen] = scores.min()
            scores[~self.valid[label, flags[b0]]] = -np.inf
            guess = scores.argmax(axis=1)
            begins, ends = self.begins[guess], self.ends[guess]
            chosen = self.label_id[guess]
            for i in np.flatnonzero(ends):
                found[i].append((int(open_start[i]) if label[i] else t, t + 1, int(chosen[i])))
            open_label[:k] = np.where(begins, chosen, np.where(ends, 0, label))
            open_start[:k] = np.where(begins, t, start)
        for doc, ents in zip(order, found):
            doc.set_ents([Span(doc, s, e, label=self.id_label[lab]) for s, e, lab in ents], default="outside")


class TokenEmbeddings:
    """The output of a tok2vec's embedding layer (hashed NORM, PREFIX, SUFFIX and SHAPE, then
    maxout and layer norm), kept per distinct row of features, up to `MAX_ROWS` of them.

    Every step of that layer works on each token's row alone, so a token's output is the same
    wherever it occurs, up to float rounding: matrix products round a row differently with the
    number of rows beside it. spaCy's own results already vary that much with the batch (up to
    about 4e-6 between one text at a time and 600 at once), so the entities are the same; the
    tests check them against spaCy's."""

    MAX_ROWS = 200_000  # 77 MB at width 96; then it starts afresh

    def __init__(self, columns, embed, mix):
        self.columns, self.embed, self.mix = columns, embed, mix
        self.rows: dict[bytes, int] = {}  # a row of features -> its row in `table`
        self.table = np.zeros((1024, mix.get_dim("nO")), dtype=np.float32)

    @classmethod
    def for_tok2vec(cls, tok2vec):
        """The cache for spaCy's standard tok2vec with hash embeddings only (no static vectors,
        which are looked up by other attributes), or None."""
        try:
            embed = tok2vec.layers[0].layers[0]
            names = [layer.name for layer in embed.layers]
            parts, mix = embed.layers[2].layers[0], embed.layers[3].layers[0]
        except (AttributeError, IndexError):
            return None
        if (len(names) != 5 or names[:2] != ["extract_features", "list2ragged"] or names[4] != "ragged2list"
                or mix.name != "maxout>>layernorm>>dropout"
                or not parts.layers or any(part.name != "ints-getitem>>hashembed" for part in parts.layers)):
            return None
        return cls(embed.layers[0].attrs["columns"], parts, mix)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """The embedding layer's output for each row of `features` (tokens' `columns`, as
        `Doc.to_array` gives them)."""
        if not len(features):
            return self.table[:0]
        features = np.ascontiguousarray(features, dtype=np.uint64)
        keys = features.view(np.dtype((np.void, 8 * features.shape[1]))).ravel().tolist()
        rows = self.rows
        if len(rows) + len(keys) > self.MAX_ROWS:
            rows.clear()
        get = rows.get
        index = np.fromiter((get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(index < 0)
        if len(missing):
            new: list[int] = []  # where each new row first occurs
            first = len(rows)
            for i in missing.tolist():
                row = get(keys[i])
                if row is None:
                    row = rows[keys[i]] = first + len(new)
                    new.append(i)
                index[i] = row
            if len(rows) > len(self.table):
                grown = np.zeros((max(len(rows), 2 * len(self.table)), self.table.shape[1]), dtype=np.float32)
                grown[:first] = self.table[:first]
                self.table = grown
            self.table[first:len(rows)] = self.mix.predict(self.embed.predict(features[new]))
        return self.table[index]


@lru_cache(maxsize=4)
def decoder(nlp) -> GreedyNer | None:
    """One decoder per pipeline, so that its token embeddings outlive a call."""
    return GreedyNer.for_pipeline(nlp)


def ner_docs(nlp, texts, batch_size: int, fast: bool = True):
    """Docs with their entities, as `nlp.pipe` gives them, in batches of at most `batch_size`
    documents and NER_BATCH_CHARS characters. NER takes about 3 GB per million characters of a
    batch: 256 pieces of long books at once would take tens of gigabytes. `fast`: the batched
    numpy decoder where the model allows it; else spaCy's own loop.
    """
    batch_decoder = decoder(nlp) if fast else None
    for batch in batches(texts, batch_size, NER_BATCH_CHARS):
        if batch_decoder is None:
            yield from nlp.pipe(batch, batch_size=len(batch))
            continue
        docs = [nlp.make_doc(text) for text in batch]
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
