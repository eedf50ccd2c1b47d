"""spaCy's tok2vec (the NER network's token-to-vector part) forward only, in numpy: the embedding layer
kept per distinct token (`TokenEmbeddings`) and the window encoder over a whole batch (`WindowEncoder`).
`tasks.pii.fast_ner.GreedyNer` runs them where spaCy's model is the standard one."""

from __future__ import annotations

import numpy as np


class WindowEncoder:
    """spaCy's MaxoutWindowEncoder, forward only, over a whole batch in numpy: `depth` times, each token's
    row beside its neighbours' (a window of three), a maxout layer, layer norm, plus the input. The docs
    are back to back with `pad` zero rows before each and after the last, as thinc's `with_array` puts
    them. The operations of thinc's layers in their order, without what those do for training (maxout's
    argmax of every piece, the window copied by a loop per token), a block of rows at a time so that the
    window and the maxout pieces stay in cache, and the first layer's products taken once per distinct
    token (its input is the token's embedding): the encoder's time on 2-4 KB prose is less than half
    thinc's, and it was most of NER's. Layers after the first give thinc's floats bit for bit; the first
    sums three products where thinc takes one, so its floats differ in the last bits (4e-6 at most on
    prose), and the entities are the same (the tests compare them with spaCy's)."""

    BLOCK_ROWS = 2048

    def __init__(self, layers: list[tuple], pad: int):
        self.layers, self.pad = layers, pad  # per layer: W (nI, nP*nO) with the pieces in blocks, b, G, beta

    @classmethod
    def for_tok2vec(cls, tok2vec):
        """The encoder of spaCy's standard tok2vec (window 1, maxout, layer norm), or None."""
        try:
            encoder = tok2vec.layers[0].layers[1]
            pad = int(encoder.attrs["pad"])
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None
        stack = encoder.layers[0] if len(encoder.layers) == 1 else None
        blocks = stack.layers if stack is not None and len(stack.layers) > 1 else [stack]
        if stack is None or not all(block.name.startswith("residual(") and len(block.layers) == 1 for block in blocks):
            return None
        leaves = [leaf for block in blocks for leaf in _leaves(block)]
        if [n.name for n in leaves] != ["expand_window", "maxout", "layernorm", "dropout"] * len(blocks):
            return None
        layers = []
        for window, maxout, norm, _dropout in zip(*[iter(leaves)] * 4):
            if window.attrs.get("window_size") != 1:
                return None
            n_out, pieces, n_in = (maxout.get_dim(d) for d in ("nO", "nP", "nI"))
            weights = maxout.get_param("W").reshape(n_out, pieces, n_in).transpose(1, 0, 2).reshape(-1, n_in)
            bias = maxout.get_param("b").reshape(n_out, pieces).T.reshape(-1)
            layers.append((np.ascontiguousarray(weights.T), np.ascontiguousarray(bias), norm.get_param("G"),
                           norm.get_param("b"), n_out, pieces))
        return cls(layers, pad)

    def __call__(self, table: np.ndarray, index: np.ndarray, lengths: list[int]) -> np.ndarray:
        """The encoded rows of docs of `lengths` tokens back to back, token k embedded as `table[index[k]]`."""
        pad = self.pad
        doc_of_row = np.repeat(np.arange(len(lengths)), lengths)
        rows = np.arange(len(doc_of_row)) + pad * (doc_of_row + 1)  # where each token sits among the pads
        x = np.zeros((len(rows) + pad * (len(lengths) + 1), table.shape[1]), dtype=np.float32)
        x[rows] = table[index]
        first = self._first_products(table, index, rows, len(x))
        for n, layer in enumerate(self.layers):
            x = self._layer(x, *layer, products=first if n == 0 else None)
        return x[rows]

    def _first_products(self, table, index, rows, total):
        """The first layer's input is an embedded token, so its products with the three parts of the
        window's weights are taken once per distinct token of the batch (a fifth as many rows on prose):
        (products, which product row each row of the batch takes; the last product row is the pads' zero)."""
        distinct, which = np.unique(index, return_inverse=True)
        weights, width = self.layers[0][0], table.shape[1]
        parts = np.concatenate([weights[:width], weights[width:2 * width], weights[2 * width:]], axis=1)
        products = np.zeros((len(distinct) + 1, parts.shape[1]), dtype=np.float32)
        products[:-1] = table[distinct] @ parts
        ids = np.full(total + 2, len(distinct))  # one zero row before the first and after the last
        ids[rows + 1] = which
        return products, ids

    def _layer(self, x, weights, bias, gain, shift, n_out, pieces, products=None):
        total, width = x.shape
        out = np.empty_like(x)
        window = np.empty((self.BLOCK_ROWS, 3 * width), dtype=np.float32)
        for lo in range(0, total, self.BLOCK_ROWS):
            hi = min(total, lo + self.BLOCK_ROWS)
            if products is not None:
                table, ids = products
                n = weights.shape[1]
                z = table[ids[lo:hi], :n]
                z += table[ids[lo + 1:hi + 1], n:2 * n]
                z += table[ids[lo + 2:hi + 2], 2 * n:]
            else:
                z = self._window(x, window, lo, hi) @ weights
            z += bias
            y = np.maximum(z[:, :n_out], z[:, n_out:2 * n_out])
            for piece in range(2, pieces):
                np.maximum(y, z[:, piece * n_out:(piece + 1) * n_out], out=y)
            # thinc's LayerNorm term for term (numpy's mean and var are these sums), the centred rows once
            y -= np.add.reduce(y, axis=1, keepdims=True) / n_out
            var = np.add.reduce(y * y, axis=1, keepdims=True) / n_out + 1e-08
            y *= var ** (-1.0 / 2.0)
            y *= gain
            y += shift
            np.add(x[lo:hi], y, out=out[lo:hi])
        return out

    @staticmethod
    def _window(x, window, lo, hi):
        """Rows lo..hi of the batch, each beside the row before and the row after it (zeros past the ends)."""
        total, width = x.shape
        cols = window[: hi - lo]
        cols[:, width:2 * width] = x[lo:hi]
        if lo == 0:
            cols[0, :width] = 0
            cols[1:, :width] = x[lo:hi - 1]
        else:
            cols[:, :width] = x[lo - 1:hi - 1]
        if hi == total:
            cols[-1, 2 * width:] = 0
            cols[:-1, 2 * width:] = x[lo + 1:hi]
        else:
            cols[:, 2 * width:] = x[lo + 1:hi + 1]
        return cols


def _leaves(node) -> list:
    """A thinc model's layers without layers of their own, in the order they run."""
    return [leaf for layer in node.layers for leaf in _leaves(layer)] if node.layers else [node]


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
        table, index = self.lookup(features)
        return table[index]

    def lookup(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(table, index): row k of `features` embeds as `table[index[k]]`."""
        if not len(features):
            return self.table, np.zeros(0, dtype=np.int64)
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
        return self.table, index
