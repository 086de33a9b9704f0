"""NomicBert (nomic-embed-text v1 / v1.5, and v2-moe's mixture of experts), inference only, on packed token batches.

The architecture's quirks, all from ../shared/NOMIC_BERT_SPEC.md (section numbers there):
- No position table: rotary on q and k (§4.1, `model/rotary.py`), GPT-NeoX style halves unless
  `rotary_emb_interleaved`, over the first `head_dim * rotary_emb_fraction` channels. Positions restart at 0 for every
  sequence.
- Dynamic NTK (§4.3) when `rotary_scaling_factor` is set and a sequence is longer than `max_trained_positions`, from
  **that sequence's own length**. The reference uses the padded batch length and caches across calls (§4.4); we do
  not, so an embedding never depends on its batchmates or on earlier calls.
- Post-norm blocks by default: x = norm1(x + attn(x)); x = norm2(x + mlp(x)). `prenorm` is supported too.
- SwiGLU MLP: fc2(fc11(x) * silu(fc12(x))) -- fc12 is the gate (§5). fc11|fc12 are fused into one GEMM at load
  (`mlp.fc1` = cat[fc11, fc12]).
- Token-type embeddings are added (type 0 unless given); `emb_ln` follows the embeddings; no final norm, no pooler.
- Biases on Wqkv *and* out_proj exist iff `qkv_proj_bias`.
- Mixture of experts (v2-moe, nomic's remote code `NomicMoELayer`): layer i's FFN is MoE iff `moe_every_n_layers > 0`
  and `i % moe_every_n_layers == 1` (so 1, 3, 5, ... for 2; and *no* layer for 1, which we refuse). The router is a
  bias-free linear whose logits and softmax are fp32 whatever the model's dtype (near-ties flip in bf16); each token
  takes the top `moe_top_k` experts by probability, weighted by those probabilities *unrenormalised*. An expert is a
  bias-free exact-GELU MLP; the one shared `experts.bias` is added once, after the weighted sum. Tokens are grouped by
  expert, so each expert runs one GEMM pair on its own tokens.
Matryoshka (layer_norm -> truncate -> L2) lives in `model/pooling.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.activations import GATED as GATED_ACTIVATIONS
from model.activations import PLAIN as PLAIN_ACTIVATIONS
from model.cpu_parallel import run_side_by_side
from model.errors import ConfigError
from model.packing import PackedBatch, packed_attention
from model.rotary import Rotary

# below this many grouped rows per thread a run is too small to pay for its own worker
MIN_RUN_ROWS = 64


@dataclass
class NomicBertConfig:
    """The legacy (GPT2Config-based) field names; `model/config.py` maps the transformers-v5 form onto them."""

    vocab_size: int = 50257
    pad_vocab_size_multiple: int = 1
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    n_positions: int | None = None  # informational input limit; unused by the forward when rotary
    max_trained_positions: int = 2048
    rotary_scaling_factor: float | None = None
    rotary_emb_fraction: float = 0.0
    rotary_emb_base: float = 10000.0
    rotary_emb_interleaved: bool = False
    qkv_proj_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True
    prenorm: bool = False
    layer_norm_epsilon: float = 1e-5
    type_vocab_size: int = 2
    # mixture of experts (nomic-embed-text-v2-moe); see `check_moe` for what is refused
    num_experts: int = 0
    moe_top_k: int | None = None
    moe_every_n_layers: int = 0
    moe_normalize_expert_weights: bool | float | None = None
    num_shared_experts: int = 0
    expert_choice_router: bool = False

    def __post_init__(self) -> None:
        if self.activation_function not in GATED_ACTIVATIONS and self.activation_function not in PLAIN_ACTIVATIONS:
            known = sorted([*GATED_ACTIVATIONS, *PLAIN_ACTIVATIONS])
            raise ConfigError(f"activation_function={self.activation_function!r} is not supported (one of {known})")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        if not 0.0 <= self.rotary_emb_fraction <= 1.0:
            raise ConfigError(f"rotary_emb_fraction={self.rotary_emb_fraction} must be in [0, 1]")
        if self.rotary_emb_fraction > 0 and (self.rotary_dim % 2 or self.rotary_dim < 4):
            raise ConfigError(f"rotary_emb_fraction={self.rotary_emb_fraction} gives an odd or tiny rotary dim")
        if self.rotary_emb_fraction <= 0 and not self.n_positions:
            raise ConfigError("rotary_emb_fraction=0 (learned positions) needs n_positions")
        if self.rotary_scaling_factor is not None and self.rotary_scaling_factor < 1:
            raise ConfigError(f"rotary_scaling_factor={self.rotary_scaling_factor} must be >= 1 (dynamic NTK)")
        # The reference rounds the vocabulary up (and mutates the config); the checkpoint has that many rows.
        m = self.pad_vocab_size_multiple
        self.vocab_size = (self.vocab_size + m - 1) // m * m
        if self.gated:  # gated MLPs default to 8/3 width and always round up to a multiple of 256 (spec §1)
            inner = self.n_inner if self.n_inner is not None else int(8 * self.n_embd / 3)
            self.n_inner = (inner + 255) // 256 * 256
        elif self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        self.check_moe()

    def check_moe(self) -> None:
        """Refuse every MoE option nomic's code would not run the way we do (each error names its key). Keys that only
        matter in training (`router_aux_loss_coef`, `moe_resid_pdrop`, `moe_impl`, `ffn_div`) are not read."""
        if self.moe_every_n_layers < 0:
            raise ConfigError(f"moe_every_n_layers={self.moe_every_n_layers} must be >= 0")
        if self.moe_every_n_layers == 0:
            return  # nomic's code builds every layer dense then, whatever num_experts says
        if self.moe_every_n_layers == 1:
            raise ConfigError(
                "moe_every_n_layers=1 makes no layer MoE in nomic's code (layer i is MoE iff "
                "i % moe_every_n_layers == 1); set 0 for a dense model"
            )
        if self.num_experts < 1:
            raise ConfigError(f"moe_every_n_layers={self.moe_every_n_layers} needs num_experts >= 1")
        if self.moe_top_k is None or not 1 <= self.moe_top_k <= self.num_experts:
            raise ConfigError(f"moe_top_k={self.moe_top_k!r} must be between 1 and num_experts={self.num_experts}")
        if self.activation_function != "gelu":
            # the remote code's pure-PyTorch experts and its megablocks path differ for every other activation
            raise ConfigError(
                f"activation_function={self.activation_function!r} is not supported with num_experts "
                "(nomic's MoE layers run exact GELU experts only)"
            )
        if self.moe_normalize_expert_weights:
            raise ConfigError(
                f"moe_normalize_expert_weights={self.moe_normalize_expert_weights!r} is not supported "
                "(nomic's remote code ignores it, its megablocks path applies it: no one reference)"
            )
        if self.num_shared_experts:
            raise ConfigError(f"num_shared_experts={self.num_shared_experts} is not supported (no shared experts)")
        if self.expert_choice_router:
            raise ConfigError("expert_choice_router=true is not supported (token-choice top-k routing only)")

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """The layers whose FFN is a mixture of experts."""
        n = self.moe_every_n_layers
        return tuple(i for i in range(self.n_layer) if n > 0 and i % n == 1)

    def experts(self) -> dict[str, int | list[int]] | None:
        """The MoE layout /v1/models shows, None for a dense model."""
        if not self.moe_layers or self.moe_top_k is None:
            return None
        return {"num_experts": self.num_experts, "top_k": self.moe_top_k, "layers": list(self.moe_layers)}

    @property
    def gated(self) -> bool:
        return self.activation_function in GATED_ACTIVATIONS

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def position_limit(self) -> int | None:
        """A learned position table is a hard input limit; rotary has none."""
        return self.n_positions if self.rotary_emb_fraction <= 0 else None

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_emb_fraction)


class Attention(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.Wqkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_proj_bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.qkv_proj_bias)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary | None, cos_sin) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.Wqkv(x).view(T, 3, self.n_head, self.head_dim)  # (T, 3, H, D): rows are [Q; K; V], heads inside
        q, k, v = qkv.unbind(1)  # (T, H, D) each
        if rotary is not None:
            q, k = rotary.apply(qkv[:, :2], *cos_sin).unbind(1)  # q and k rotated in one pass
        out = packed_attention(q, k, v, batch)  # (T, H, D)
        return self.out_proj(out.reshape(T, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, n_embd: int, n_inner: int, activation: str, bias1: bool, bias2: bool):
        super().__init__()
        self.gated = activation in GATED_ACTIVATIONS
        if self.gated:
            self.act = GATED_ACTIVATIONS[activation]
            self.fc1 = nn.Linear(n_embd, 2 * n_inner, bias=bias1)  # [fc11 (up); fc12 (gate)]
        else:
            self.act = PLAIN_ACTIVATIONS[activation]
            self.fc1 = nn.Linear(n_embd, n_inner, bias=bias1)
        self.fc2 = nn.Linear(n_inner, n_embd, bias=bias2)

    @classmethod
    def from_config(cls, config: NomicBertConfig) -> MLP:
        return cls(config.n_embd, config.n_inner, config.activation_function, config.mlp_fc1_bias, config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.gated:
            up, gate = h.chunk(2, dim=-1)
            h = up * self.act(gate)
        else:
            h = self.act(h)
        return self.fc2(h)


class Router(nn.Module):
    """Token-choice top-k routing in fp32. The weight stays fp32 when the model is cast to bf16/fp16: a near-tie
    between two experts' probabilities (4.9e-5 apart in the golden data) flips with bf16 logits."""

    def __init__(self, n_embd: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.weight = nn.Parameter(torch.empty(num_experts, n_embd), requires_grad=False)

    def _apply(self, fn, recurse: bool = True):
        fp32 = self.weight.detach().float()
        super()._apply(fn, recurse)  # moves it (and casts it, which we undo below)
        self.weight = nn.Parameter(fp32.to(self.weight.device), requires_grad=False)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, E) -> the chosen experts' probabilities and indices, (T, k) each, larger probability first."""
        probs = F.linear(x.float(), self.weight).softmax(dim=-1)  # (T, num_experts) fp32
        return probs.topk(self.top_k, dim=-1)


class MoE(nn.Module):
    """The FFN of v2-moe's MoE layers: sum_k p_k * expert_{e_k}(x) + bias, experts run grouped (one GEMM pair each
    over the tokens routed to it), never per token. Each expert is a plain bias-free GELU `MLP`, so the CPU fast path
    (model/cpu_linear.py) packs its linears like any other.

    On CPU with n > 1 intra-op threads the grouped rows are cut into n equal runs (an expert on a cut runs as two
    GEMM pairs), each run on its own single-threaded worker (`model/cpu_parallel.py`): one join for the layer instead
    of one per GEMM (on a shared 2-core Zen 4, 2 threads, fp32: 1.6-1.8x -> 1.1-1.2x a dense FFN of the same active
    FLOPs; README, bench section)."""

    def __init__(self, config: NomicBertConfig):
        super().__init__()
        assert config.moe_top_k is not None
        self.router = Router(config.n_embd, config.num_experts, config.moe_top_k)
        self.experts = nn.ModuleList(
            MLP(config.n_embd, config.n_inner, "gelu", bias1=False, bias2=False) for _ in range(config.num_experts)
        )
        self.bias = nn.Parameter(torch.empty(config.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = self.router(x)  # (T, k) each
        T, k = chosen.shape
        flat = chosen.flatten()  # (T*k,) assignments, token-major: assignment t*k + s is token t's slot s
        order = flat.argsort(stable=True)  # the assignments grouped by expert
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        y = x.new_empty(T * k, x.shape[1])  # each assignment's expert output, token-major

        def run(segments: list[tuple[int, int, int]]) -> None:
            first, end = segments[0][1], segments[-1][2]
            xs = x[order[first:end] // k]  # (rows of this run, E): the tokens, grouped by expert
            for e, a, b in segments:
                y.index_copy_(0, order[a:b], self.experts[e](xs[a - first : b - first]))

        run_side_by_side(run, expert_runs(counts, torch.get_num_threads() if x.device.type == "cpu" else 1))
        y3 = y.view(T, k, -1)  # (T, k, E)
        weights = weights.to(x.dtype)
        out = torch.addcmul(self.bias, y3[:, 0], weights[:, :1])  # bias + sum_s p_s * y_s
        for s in range(1, k):
            out.addcmul_(y3[:, s], weights[:, s : s + 1])
        return out


def expert_runs(counts: list[int], n: int) -> list[list[tuple[int, int, int]]]:
    """The grouped rows (expert e owns the next counts[e]) cut into at most n runs of equal length: each run a list of
    (expert, first row, end row) segments, empty experts left out."""
    total = sum(counts)
    n = max(1, min(n, total // MIN_RUN_ROWS))
    cuts = [total * i // n for i in range(n + 1)]
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    start = 0
    for e, count in enumerate(counts):
        end = start + count
        for r in range(n):
            a, b = max(start, cuts[r]), min(end, cuts[r + 1])
            if a < b:
                runs[r].append((e, a, b))
        start = end
    return [run for run in runs if run]


class Block(nn.Module):
    def __init__(self, config: NomicBertConfig, moe: bool = False):
        super().__init__()
        self.prenorm = config.prenorm
        self.attn = Attention(config)
        self.mlp: nn.Module = MoE(config) if moe else MLP.from_config(config)
        self.norm1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.norm2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor, batch: PackedBatch, rotary: Rotary | None, cos_sin) -> torch.Tensor:
        if self.prenorm:  # the block's input is the un-normed residual stream
            x = x + self.attn(self.norm1(x), batch, rotary, cos_sin)
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x, batch, rotary, cos_sin))
        return self.norm2(x + self.mlp(x))


class Embeddings(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.n_embd) if config.type_vocab_size > 0 else None
        )
        self.position_embeddings = (
            nn.Embedding(config.n_positions, config.n_embd) if config.rotary_emb_fraction <= 0 else None
        )

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word_embeddings(batch.input_ids)  # (T, E)
        if self.token_type_embeddings is not None:
            if batch.token_type_ids is None:  # type 0 for every token, added all the same
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(batch.token_type_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(batch.positions)
        return x


class Encoder(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(config, moe=i in config.moe_layers) for i in range(config.n_layer))


class NomicBert(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.encoder = Encoder(config)
        self.rotary = (
            Rotary(
                config.rotary_dim,
                config.rotary_emb_base,
                interleaved=config.rotary_emb_interleaved,
                ntk_factor=config.rotary_scaling_factor,
                max_trained=config.max_trained_positions,
            )
            if config.rotary_emb_fraction > 0
            else None
        )

    def flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs per token at a given sequence length (for utilisation figures); MoE layers count the work
        done (router and the top-k experts), not the experts a token skips."""
        c = self.config
        mlp = 2 * c.n_embd * ((2 if c.gated else 1) * c.n_inner + c.n_inner)
        moe = c.num_experts * 2 * c.n_embd + (c.moe_top_k or 0) * mlp  # router + the k experts a token runs
        linear = 2 * c.n_embd * (3 * c.n_embd + c.n_embd)
        attention = 4 * seq_len * c.n_embd
        n_moe = len(c.moe_layers)
        return c.n_layer * (linear + attention) + (c.n_layer - n_moe) * mlp + n_moe * moe

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Packed batch -> last hidden state, (T, E)."""
        x = self.emb_ln(self.embeddings(batch))
        cos_sin = self.rotary.cos_sin(batch, x.dtype) if self.rotary is not None else None  # once per forward
        for layer in self.encoder.layers:
            x = layer(x, batch, self.rotary, cos_sin)
        return x
