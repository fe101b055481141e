"""What a transformer language model is, for memory and time planning: frozen, built with keywords.

Only what sizes the KV cache, the weights and the attention call is kept: layers, widths,
heads, vocabulary and the parameter count. Mixture-of-experts models (Mixtral) add their
expert count, the experts each token uses, and the parameters one token touches.
"""

from dataclasses import dataclass, field
from typing import Mapping

from memsim.errors import MemsimError

# Fields that hold a number and must cite where it came from in a preset.
NUMBER_FIELDS = ("layers", "hidden_size", "q_heads", "kv_heads", "head_dim", "vocab_size", "ffn_size",
                 "params", "active_params", "max_context", "experts", "experts_per_token")
FLAG_FIELDS = ("tied_embeddings", "qkv_bias")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One decoder-only transformer with a gated (SwiGLU) MLP and RMSNorm, as the LLaMA family.

    K and V per layer are [tokens, kv_heads, head_dim]; Q is [tokens, q_heads, head_dim].
    kv_heads == q_heads is multi-head attention (MHA), 1 < kv_heads < q_heads grouped-query
    (GQA), kv_heads == 1 multi-query (MQA).
    """

    name: str
    layers: int
    hidden_size: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    ffn_size: int  # width of one MLP (one expert's, for mixture-of-experts)
    params: int  # every parameter, all experts included
    max_context: int  # tokens: the position embedding's trained range (max_position_embeddings)
    active_params: int | None = None  # parameters one token touches (MoE); None: all of them
    experts: int = 1  # MLP experts per layer
    experts_per_token: int = 1  # experts the router picks per token
    tied_embeddings: bool = False  # the output projection reuses the input embedding
    qkv_bias: bool = False  # the Q, K and V projections have biases (Qwen2)
    sliding_window: int | None = None  # tokens each query sees, where the model was trained so
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> citation

    def __post_init__(self):
        for name in ("layers", "hidden_size", "q_heads", "kv_heads", "head_dim", "vocab_size", "ffn_size",
                     "params", "max_context", "experts", "experts_per_token"):
            _positive(self.name, name, getattr(self, name))
        if self.q_heads % self.kv_heads:
            raise MemsimError(f"model {self.name}: q_heads = {self.q_heads} is not a multiple of kv_heads = "
                              f"{self.kv_heads}; kv_heads must divide q_heads")
        if self.experts_per_token > self.experts:
            raise MemsimError(f"model {self.name}: experts_per_token = {self.experts_per_token} exceeds "
                              f"experts = {self.experts}")
        if self.active_params is not None:
            _positive(self.name, "active_params", self.active_params)
            if self.active_params > self.params:
                raise MemsimError(f"model {self.name}: active_params = {self.active_params} exceeds "
                                  f"params = {self.params}")

    @property
    def attention(self) -> str:
        """MHA, GQA or MQA."""
        if self.kv_heads == self.q_heads:
            return "MHA"
        return "MQA" if self.kv_heads == 1 else "GQA"

    @property
    def group_size(self) -> int:
        """Query heads sharing one K/V head."""
        return self.q_heads // self.kv_heads

    @property
    def is_moe(self) -> bool:
        return self.experts > 1

    @property
    def params_per_token(self) -> int:
        """Parameters one token's forward pass multiplies by: all of them for a dense model."""
        return self.params if self.active_params is None else self.active_params

    def params_from_shapes(self) -> int:
        """Parameters summed over the weight matrices the architecture implies (LLaMA layout):

        per layer   Q, O: hidden x q_heads*head_dim; K, V: hidden x kv_heads*head_dim (+ biases if qkv_bias)
                    MLP: 3 x hidden x ffn_size per expert (gate, up, down), router hidden x experts
                    two RMSNorm weights of hidden
        once        embedding vocab x hidden, output projection the same unless tied, final RMSNorm
        """
        return self._layer_params(self.experts) * self.layers + self._outer_params()

    def active_params_from_shapes(self) -> int:
        """As params_from_shapes, with only the experts_per_token experts a token is routed to."""
        return self._layer_params(self.experts_per_token) * self.layers + self._outer_params()

    def _layer_params(self, experts: int) -> int:
        h, q, kv = self.hidden_size, self.q_heads * self.head_dim, self.kv_heads * self.head_dim
        attention = 2 * h * q + 2 * h * kv + (q + 2 * kv if self.qkv_bias else 0)
        router = h * self.experts if self.is_moe else 0
        return attention + experts * 3 * h * self.ffn_size + router + 2 * h

    def _outer_params(self) -> int:
        embedding = self.vocab_size * self.hidden_size
        return embedding * (1 if self.tied_embeddings else 2) + self.hidden_size

    def as_dict(self) -> dict:
        out = {name: getattr(self, name) for name in ("name", *NUMBER_FIELDS, *FLAG_FIELDS, "sliding_window")}
        out["attention"] = self.attention
        return out


def _positive(model: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise MemsimError(f"model {model}: {name} = {value!r} must be a positive whole number")
