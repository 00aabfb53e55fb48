"""Classic PyTorch networks written the way their authors write them (not by gmn's rules):
a U-Net with skip concatenation and transposed convolutions, a 3-D CNN, squeeze-excitation,
a loop-over-experts MoE, ``nn.TransformerEncoder``, recurrent layers (``nn.LSTM``, ``nn.GRU``,
``nn.RNN``: stacked, bidirectional, projected, seq2seq), weight normalisation and pixel shuffle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UNet(nn.Module):
    def __init__(self, c: int = 4):
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.down2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.fuse = nn.Conv2d(2 * c, c, 3, padding=1)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a = self.down1(x)
        b = self.down2(F.max_pool2d(a, 2))
        return self.head(F.relu(self.fuse(torch.cat([a, self.up(b)], 1))))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.gelu(self.c2(F.relu(self.c1(x)))).mean((2, 3, 4)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
        self.out = nn.Linear(c, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.out((h * s).mean((2, 3)))


class LoopMoE(nn.Module):
    """Router ``Linear`` + ``ModuleList`` of experts, top-k, the gate taken per expert inside
    a loop (``(topk_weights * (topk_idx == j)).sum(-1)``): the expert-to-router-row link goes
    through integer comparisons no rule can read."""

    def __init__(self, d: int = 8, experts: int = 3):
        super().__init__()
        self.router = nn.Linear(d, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d, 12), nn.GELU(), nn.Linear(12, d))
                                     for _ in range(experts))
        self.inp, self.out = nn.Linear(5, d), nn.Linear(d, 2)

    def forward(self, x):
        h = self.inp(x)
        weights, idx = torch.topk(torch.softmax(self.router(h), -1), 2, dim=-1)
        y = torch.zeros_like(h)
        for j, expert in enumerate(self.experts):
            gate = (weights * (idx == j)).sum(-1, keepdim=True)
            y = y + gate * expert(h)
        return self.out(h + y)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.inp, self.out = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.LSTM(5, 6, num_layers=2, batch_first=True), nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.out = nn.GRU(5, 6, bidirectional=True, batch_first=True), nn.Linear(12, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


class ProjectedLSTM(nn.Module):
    """Time-major, two layers, bidirectional, ``proj_size``; reads the last layer's final
    hidden and cell states as well."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
        self.out, self.state = nn.Linear(6, 2), nn.Linear(6 + 12, 2)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        last = [s[-2:].transpose(0, 1).flatten(1) for s in (h, c)]  # both directions of the top layer
        return self.out(y), self.state(torch.cat(last, -1))


class ReluRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(5, 6, num_layers=2, nonlinearity="relu", bias=False, batch_first=True)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


class Seq2Seq(nn.Module):
    """The decoder starts from the encoder's last state: both layers' units are tied."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.GRU(5, 6, batch_first=True), nn.GRU(3, 6, batch_first=True)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        _, h = self.enc(x)
        return self.out(self.dec(x[..., :3].flip(1), h)[0])


class UnbatchedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.rnn, self.out = nn.Linear(5, 4), nn.LSTM(4, 6), nn.Linear(6, 2)

    def forward(self, x):  # x: (time, features), no batch axis
        return self.out(self.rnn(torch.tanh(self.inp(x)))[0])


class FeaturesFirstConv(nn.Module):
    """Speech2Text's subsampler: (batch, time, features) transposed into a strided ``Conv1d``
    with GLU. The input's channel axis is guessed as axis 1 (time), so the conv's channels
    differ only in position: they must not be interchangeable."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1 = nn.Conv1d(8, 8, 5, stride=2, padding=2), nn.Conv1d(4, 12, 5, stride=2, padding=2)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = F.glu(self.c0(x.transpose(1, 2)), dim=1)
        return self.out(F.glu(self.c1(h), dim=1).transpose(1, 2))


class PixelShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return self.out(F.pixel_shuffle(torch.tanh(self.conv(x)), 2))


class LinearAttention(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.inp = nn.Linear(5, d)

    def forward(self, x):
        h = self.inp(x)
        q, k, v = F.elu(self.q(h)) + 1, F.elu(self.k(h)) + 1, self.v(h)
        return self.o(torch.einsum("bnd,bne,bme->bmd", q, k, v))


class PixelUnshuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 2, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.out(F.pixel_unshuffle(F.relu(self.conv(x)), 2))


class WeightNormNet(nn.Module):
    """Weight norm over each output row (the default), over input columns, and over the
    whole tensor."""

    def __init__(self):
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.fc = wn(nn.Linear(5, 6))
        self.mid = wn(nn.Linear(6, 6), dim=1)
        self.out = wn(nn.Linear(6, 2), dim=None)

    def forward(self, x):
        return self.out(F.relu(self.mid(F.relu(self.fc(x)))))


class WeightNormConv(nn.Module):
    """Wav2Vec2's positional convolution: grouped ``Conv1d`` normalised over its kernel axis
    (``dim=2``), and the deprecated hook API on a second layer."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv1d(3, 4, 1)
        self.pos = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1, groups=2), dim=2)
        self.out = nn.utils.weight_norm(nn.Conv1d(4, 2, 1))

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + F.gelu(self.pos(h)))


def _seq(*shape):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64),)


#: name -> (factory, inputs)
CLASSIC = {
    "unet": (UNet, _seq(1, 3, 8, 8)),
    "conv3d": (Conv3dNet, _seq(1, 2, 4, 4, 4)),
    "squeeze_excite": (SqueezeExcite, _seq(1, 3, 8, 8)),
    "loop_moe": (LoopMoE, _seq(1, 6, 5)),
    "torch_transformer": (Encoder, _seq(1, 6, 5)),
    "linear_attention_einsum": (LinearAttention, _seq(1, 4, 5)),
    "lstm": (LSTMNet, _seq(1, 4, 5)),
    "gru_bidirectional": (GRUNet, _seq(1, 4, 5)),
    "lstm_projected_bidirectional": (ProjectedLSTM, _seq(4, 2, 5)),
    "rnn_relu_no_bias": (ReluRNN, _seq(2, 4, 5)),
    "seq2seq_gru": (Seq2Seq, _seq(1, 4, 5)),
    "lstm_unbatched": (UnbatchedLSTM, _seq(4, 5)),
    "features_first_conv": (FeaturesFirstConv, _seq(1, 16, 8)),
    "pixel_shuffle": (PixelShuffleNet, _seq(1, 3, 4, 4)),
    "pixel_unshuffle": (PixelUnshuffleNet, _seq(1, 3, 4, 4)),
    "weight_norm": (WeightNormNet, _seq(1, 5)),
    "weight_norm_conv": (WeightNormConv, _seq(1, 3, 6)),
}

class BilinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.mix = nn.Linear(5, 4), nn.Bilinear(4, 4, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.mix(h, h.flip(-1))


class BagOfEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag, self.out = nn.EmbeddingBag(10, 4, mode="mean"), nn.Linear(4, 2)

    def forward(self, tokens):
        return self.out(self.bag(tokens))


#: still refused, each with a clear ConversionError naming the op (name -> (factory, inputs))
REFUSED = {
    "bilinear": (BilinearNet, _seq(2, 5)),
    "embedding_bag": (BagOfEmbeddings, (torch.tensor([[1, 4, 2], [7, 7, 0]]),)),
}
