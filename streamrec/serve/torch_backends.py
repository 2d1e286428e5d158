"""The torch backends of ``serve.lm.LMScorer``: fp32 on the CPU, bf16 / fp8 / int8 on CUDA (the low-precision
Linear layers of the ``cuda-fp8`` / ``cuda-int8`` modes). The ONNX Runtime backend is in ``backends.py``: it runs
without torch (the lean CPU image has none); this module is imported only when a torch backend is chosen.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from streamrec.model.export import TableLM
from streamrec.model.itemlm import PAD, ItemLM
from streamrec.serve.backends import spare_capacity

log = logging.getLogger(__name__)


# --- low-precision Linear layers (cuda-fp8 / cuda-int8) ----------------------------------------------------------

E4M3_MAX = 448.0


def quantize_rows(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization: (q [rows, K] fp8 e4m3 or int8, scale [rows, 1] fp32), x ~= q * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    if mode == "fp8":
        scale = amax / E4M3_MAX
        q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    elif mode == "int8":
        scale = amax / 127.0
        q = (x.float() / scale).round().clamp(-127, 127).to(torch.int8)
    else:
        raise ValueError(mode)
    return q, scale


_PROBED: dict[tuple[str, str], bool] = {}   # (device, kernel) -> works; tests may set entries to force a path


def _kernel_call(kernel: str, device: torch.device) -> None:
    """The exact GEMM ``QuantLinear.forward`` makes for ``kernel``, at a small size: same dtypes, layouts (A
    row-major, B column-major for fp8 / row-major for int8), scale shapes and output dtype."""
    rows, k, n = 32, 32, 16
    if kernel == "int8":
        a = torch.ones(rows, k, device=device, dtype=torch.int8)
        torch._int_mm(a, torch.ones(n, k, device=device, dtype=torch.int8).t().contiguous())
        return
    a = torch.ones(rows, k, device=device).to(torch.float8_e4m3fn)
    b = torch.ones(n, k, device=device).to(torch.float8_e4m3fn).t()
    if kernel == "fp8_rowwise":
        torch._scaled_mm(a, b, scale_a=torch.ones(rows, 1, device=device),
                         scale_b=torch.ones(1, n, device=device), out_dtype=torch.bfloat16)
    elif kernel == "fp8_tensorwise":
        one = torch.ones((), device=device)
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32)
    else:
        raise ValueError(kernel)
    if device.type == "cuda":
        torch.cuda.synchronize(device)   # a kernel launch error surfaces here, not in the first real batch


def kernel_supported(device: torch.device, kernel: str) -> bool:
    """Whether ``kernel`` (``fp8_rowwise``, ``fp8_tensorwise`` or ``int8``) runs on ``device``: probed once per
    device with the exact call used. Only CUDA devices are probed; elsewhere (the CPU test path, the meta device)
    the answer is False without a probe -- a meta tensor checks shapes, not what the hardware can do."""
    device = torch.device(device)
    key = (str(device), kernel)
    if key not in _PROBED:
        if device.type != "cuda":
            return False
        try:
            _kernel_call(kernel, device)
            _PROBED[key] = True
        except (RuntimeError, NotImplementedError) as exc:
            log.warning("%s GEMM unavailable on %s: %s", kernel, device, exc)
            _PROBED[key] = False
    return _PROBED[key]


def fp8_rowwise_supported(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` takes row-wise scales with bf16 output here; otherwise QuantLinear runs the
    tensor-wise GEMM with fp32 output and applies the scales afterwards (same math)."""
    return kernel_supported(device, "fp8_rowwise")


def require_kernels(device: torch.device, mode: str) -> None:
    """Refuse a low-precision mode on a CUDA device whose kernels fail, instead of failing every batch later."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    kernel = "int8" if mode == "int8" else "fp8_tensorwise"   # fp8 always needs the tensor-wise fp32 call
    if not kernel_supported(device, kernel):
        raise RuntimeError(f"{mode}: torch.{'_int_mm' if mode == 'int8' else '_scaled_mm'} does not run on "
                           f"{device}; use cuda-bf16")


class QuantLinear(nn.Module):
    """``y = x @ W.T (+ b)`` with W quantized once per output channel and x per row (token) on every call.

    fp8:  ``torch._scaled_mm`` with row-wise scales (sm89+/sm90; bf16 output). With ``fp32_out=True`` -- and where
          row-wise scaling is unavailable -- it runs with unit tensor-wise scales and fp32 output and applies the
          two scale vectors afterwards: the same math, with fp32 scores (bf16 would tie close items in a ranking).
    int8: ``torch._int_mm`` (int32 accumulation), scales applied in fp32.
    CUDA layout rules honoured here: fp8 needs K and N divisible by 16, A row-major, B column-major; _int_mm needs
    K, N divisible by 8 and more than 16 rows (smaller batches are zero-padded).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: str, out_dtype: torch.dtype,
                 fp32_out: bool = False):
        super().__init__()
        if not self.supports(weight.shape[1], weight.shape[0], mode):
            raise ValueError(f"{mode} needs in/out features divisible by {16 if mode == 'fp8' else 8}: "
                             f"{tuple(weight.shape)}")
        self.mode, self.out_dtype, self.fp32_out = mode, out_dtype, fp32_out
        self.rowwise = mode == "fp8" and not fp32_out and fp8_rowwise_supported(weight.device)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        q, s = quantize_rows(weight.detach(), mode)
        # fp8: B must be column-major [K, N]: the transpose of the row-major [N, K] weight, as a view.
        # int8: B row-major [K, N] (torchao's safe_int_mm notes cuBLAS int8 silently errs on a transposed B).
        self.register_buffer("wq_t", q.t() if mode == "fp8" else q.t().contiguous(), persistent=False)
        self.register_buffer("w_scale", s.reshape(1, -1).contiguous(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype), persistent=False)
        self.register_buffer("one", torch.ones((), dtype=torch.float32, device=weight.device), persistent=False)

    @torch.no_grad()
    def set_rows(self, start: int, weight_rows: torch.Tensor) -> None:
        """Overwrite output channels ``start..`` (weight rows) in place: per-channel scales, so the others keep
        theirs (cold-start items appended to the item-scoring layer)."""
        q, sc = quantize_rows(weight_rows.to(self.wq_t.device), self.mode)
        end = start + weight_rows.shape[0]
        self.wq_t[:, start:end] = q.t()
        self.w_scale[0, start:end] = sc.reshape(-1)

    @staticmethod
    def supports(in_features: int, out_features: int, mode: str) -> bool:
        m = 16 if mode == "fp8" else 8
        return in_features % m == 0 and out_features % m == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        q, sa = quantize_rows(x2, self.mode)
        if self.mode == "fp8":
            if self.rowwise:
                y = torch._scaled_mm(q, self.wq_t, scale_a=sa, scale_b=self.w_scale, out_dtype=torch.bfloat16)
            else:
                y = torch._scaled_mm(q, self.wq_t, scale_a=self.one, scale_b=self.one, out_dtype=torch.float32)
                y = y * sa * self.w_scale
        else:
            rows = q.shape[0]
            if rows <= 16:   # cuBLAS int8 GEMM through _int_mm wants more than 16 rows
                q = torch.cat([q, q.new_zeros(32 - rows, q.shape[1])])
            y = torch._int_mm(q, self.wq_t)[:rows].float() * sa * self.w_scale
        y = y if self.fp32_out else y.to(self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def cast_keeping_rope(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module.to(device, dtype)``, but the rotary ``inv_freq`` buffers stay fp32 (bf16 would skew positions)."""
    keep = {n: b.detach().clone() for n, b in module.named_buffers() if n.endswith("inv_freq")}
    module.to(device, dtype)
    for name, buf in keep.items():
        owner, _, attr = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, attr, buf.to(device))
    return module


def quantize_linears(module: nn.Module, mode: str, out_dtype: torch.dtype) -> tuple[list[str], list[str]]:
    """Replace every eligible ``nn.Linear`` under ``module`` by a ``QuantLinear``; returns (names replaced, names
    kept in ``out_dtype`` because their sizes do not fit the kernel)."""
    done, kept = [], []
    for name, child in list(module.named_modules()):
        for cname, sub in list(child.named_children()):
            if isinstance(sub, nn.Linear):
                full = f"{name}.{cname}" if name else cname
                if QuantLinear.supports(sub.in_features, sub.out_features, mode):
                    setattr(child, cname, QuantLinear(sub.weight, sub.bias, mode, out_dtype))
                    done.append(full)
                else:
                    kept.append(f"{full} ({sub.in_features}x{sub.out_features})")
    return done, kept


# --- backends -----------------------------------------------------------------------------------------------------

class TorchBackend:
    """torch: fp32, or bf16 / fp8 / int8 (a bf16 backbone whose Linear layers are fp8 or int8).

    The item-scoring matmul runs in fp32 (fp32, bf16: ``h.float() @ table.T``, cheap next to the backbone) or, for
    fp8/int8, as a ``QuantLinear`` over the table (per-item scales, fp32 scores). Exclusions and top-k run on the
    device; only [batch, k] ids and scores come back.
    """

    def __init__(self, model: ItemLM, name: str, mode: str, device: str | torch.device):
        self.name, self.mode, self.device, self.calls = name, mode, torch.device(device), 0
        self.dtype = torch.float32 if mode == "fp32" else torch.bfloat16
        net = TableLM(model)
        if self.device.type != "cpu" or mode != "fp32":   # the CPU fp32 backend shares the master copy's weights
            net = cast_keeping_rope(copy.deepcopy(net), self.device, self.dtype)
            # Eager attention (additive mask): left padding makes fully masked query rows, which must give
            # numbers, not NaN, whatever SDPA kernel the GPU would pick; at <= 64 positions it costs nothing.
            net.backbone.set_attn_implementation("eager")
        self.quantized: list[str] = []
        self.kept_bf16: list[str] = []
        if mode in ("fp8", "int8"):
            require_kernels(self.device, mode)
            self.quantized, self.kept_bf16 = quantize_linears(net.backbone, mode, torch.bfloat16)
            log.info("%s: %d Linear layers quantised to %s: %s", name, len(self.quantized), mode,
                     ", ".join(self.quantized) or "none")
            if self.kept_bf16:   # sizes that are not multiples of the kernel's: these run in bf16
                log.warning("%s: %d Linear layers kept in bf16 (sizes the %s kernel cannot take): %s", name,
                            len(self.kept_bf16), mode, ", ".join(self.kept_bf16))
        self.net = net.eval()
        self.table: torch.Tensor | None = None      # views of the first n_table rows of the capacity buffers
        self.table_f32: torch.Tensor | None = None
        self._table_buf: torch.Tensor | None = None
        self._f32_buf: torch.Tensor | None = None
        self.scoring: QuantLinear | None = None
        self.n_table = 0

    def set_table(self, table: torch.Tensor) -> None:
        n, dim = table.shape
        cap = spare_capacity(n)
        self._table_buf = torch.zeros(cap, dim, dtype=self.dtype, device=self.device)
        self._f32_buf = None
        self.n_table = 0
        rows = -(-cap // 16) * 16
        if self.mode in ("fp8", "int8") and QuantLinear.supports(dim, rows, self.mode):
            # h @ table.T is a Linear with the table as its weight: quantized per item, rows padded to a multiple
            # of 16 (rows past n_table score -inf below; cold-start items are quantized into them in place).
            self.scoring = QuantLinear(torch.zeros(rows, dim, device=self.device), None, self.mode, torch.float32,
                                       fp32_out=True)
        else:
            if self.mode in ("fp8", "int8"):
                log.warning("%s: item-scoring matmul kept in fp32 (hidden size %d)", self.name, dim)
            self.scoring = None
            self._f32_buf = torch.zeros(cap, dim, dtype=torch.float32, device=self.device)
        self.append_rows(table)

    def append_rows(self, rows: torch.Tensor) -> bool:
        """Cold-start rows after the existing ones, in place (uploaded, and quantized if so, alone); False when the
        spare capacity is used up."""
        n, m = self.n_table, self.n_table + rows.shape[0]
        if m > self._table_buf.shape[0]:
            return False
        rows = rows.to(self.device, torch.float32)
        self._table_buf[n:m] = rows.to(self.dtype)
        self.table = self._table_buf[:m]
        if self.scoring is not None:
            self.scoring.set_rows(n, rows)
        else:
            self._f32_buf[n:m] = rows
            self.table_f32 = self._f32_buf[:m]
        self.n_table = m
        return True

    @torch.inference_mode()
    def _logits(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        self.calls += 1
        ids_t = torch.from_numpy(ids).to(self.device, non_blocking=True)
        mask_t = torch.from_numpy(mask).to(self.device, non_blocking=True)
        h = self.net.hidden(ids_t, mask_t, self.table)
        if self.scoring is None:
            logits = h.float() @ self.table_f32.T
        else:
            logits = self.scoring(h)
            logits[:, self.n_table:] = float("-inf")
        logits[:, PAD] = float("-inf")
        return logits

    def logits(self, ids, mask) -> np.ndarray:
        return self._logits(ids, mask)[:, : self.n_table].cpu().numpy()

    @torch.inference_mode()
    def topk(self, ids, mask, excl, k, bonus=()):
        logits = self._logits(ids, mask)
        for rows, cols, values in bonus:   # the blend's sparse terms (backends.Bonus)
            at = (torch.from_numpy(rows).to(self.device), torch.from_numpy(cols).to(self.device))
            logits.index_put_(at, torch.from_numpy(values).to(self.device, logits.dtype), accumulate=True)
        if len(excl[0]):
            rows = torch.from_numpy(excl[0]).to(self.device, non_blocking=True)
            cols = torch.from_numpy(excl[1]).to(self.device, non_blocking=True)
            logits[rows, cols] = float("-inf")
        vals, idx = torch.topk(logits, min(k, self.n_table), dim=1)
        return vals.cpu().numpy(), idx.cpu().numpy()
