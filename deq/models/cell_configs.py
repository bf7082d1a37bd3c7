"""The settings of each cell, one frozen record per architecture, checked on creation.

Kept apart from the cells themselves (:mod:`deq.models.transformer`, :mod:`deq.models.trellis`) because
the rows of the paper's tables hold them and the workflow reads those rows without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TransformerCellConfig", "TrellisCellConfig"]


@dataclass(frozen=True)
class TransformerCellConfig:
    d_model: int  # width of the state z (d_state = d_out = d_model)
    n_head: int  # attention heads H
    d_head: int  # width of one head Dh (H*Dh need not equal d_model)
    d_inner: int  # hidden width of the position-wise feed-forward
    dropout: float  # variational dropout on the attention output and the FF output, in [0, 1)
    pre_lnorm: bool = False  # False: post-LN (the paper's); True: pre-LN residual blocks
    weight_norm: bool = True  # weight normalisation on every linear map inside f (not on inject)
    # N(0, init_std) for inject, the attention biases r_w/r_r and any map without weight norm (the official
    # train_transformer.py's --init_std 0.01; the paper says 0.05). Weight-normed maps keep torch's
    # default init: the official script writes N(0, 0.01) into their computed weight, which weight norm
    # then recomputes from the untouched v and g (see _linear).
    init_std: float = 0.01
    d_embed: int | None = None  # width of the embeddings entering inject; None means d_model

    def __post_init__(self) -> None:
        for name in ("d_model", "n_head", "d_head", "d_inner"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.d_embed is not None and (not isinstance(self.d_embed, int) or self.d_embed <= 0):
            raise ValueError(f"d_embed must be a positive int or None, got d_embed={self.d_embed!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got init_std={self.init_std!r}")

    @property
    def embed_width(self) -> int:
        return self.d_model if self.d_embed is None else self.d_embed


@dataclass(frozen=True)
class TrellisCellConfig:
    d_embed: int  # width of the embeddings x entering `inject` (official d_embed, 500 on WT103)
    d_hidden: int  # width of h and of c: the official h_size = nhid + nout (1500 + 500 = 2000 on WT103)
    d_out: int  # channels passed to the decoder: the last d_out channels of h (official nout, 500)
    dropout: float  # variational dropout on h before the recurrent conv, in [0, 1) (official dropouth, 0.1)
    kernel_size: int = 2  # temporal kernel of both convs; only 2 (the official value) is implemented
    weight_norm: bool = True  # weight normalisation on the injection conv and the recurrent conv
    init_std: float = 0.01  # recurrent conv weight and bias ~ N(0, init_std) (official code 0.01, paper 0.05)

    def __post_init__(self) -> None:
        for name in ("d_embed", "d_hidden", "d_out"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.d_out > self.d_hidden:
            raise ValueError(f"d_out must be <= d_hidden (the readout is the last d_out channels of h), "
                             f"got d_out={self.d_out!r}, d_hidden={self.d_hidden!r}")
        if self.kernel_size != 2:
            raise ValueError(f"only kernel_size=2 is implemented, got kernel_size={self.kernel_size!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got dropout={self.dropout!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive, got init_std={self.init_std!r}")
