"""Many LoRA adapters in one batch at the cost of one: the base projection once for every row, then each row's
own low-rank delta (S-LoRA / Punica style, here with batched matmuls over per-row gathered A/B matrices).

For every LoRA-wrapped linear layer the adapters' ``A`` (r×in) and ``B·scaling`` (out×r) are stacked once, padded
to the largest rank, with a zero entry 0 for the base model. For a batch whose rows use adapters ``idx`` the stacks
are gathered once per batch *composition* (not per step), so a decode step costs, per layer, one slice and two
small ``bmm`` on the rows that use an adapter, and nothing for base rows. PEFT's own forward is switched off
for those calls (``_disable_adapters``), so PEFT only holds the weights: the adapters keep PEFT's format.

Adapters this cannot express exactly (DoRA and other LoRA variants, a LoRA bias, LoRA on embeddings or
convolutions) make :func:`MultiLora.build` return None, and the scheduler uses PEFT's mixed-batch forward instead.
"""

from __future__ import annotations

from typing import Sequence


class MultiLora:
    """The attached adapters of a PEFT model as stacked per-layer tables; :meth:`select` a batch's rows, then call
    the base model inside :meth:`active`."""

    def __init__(self, layers: list, names: list[str], tables: list[tuple]):
        self.layers = layers          # the LoRA-wrapped modules, in model order
        self.names = names            # adapter names; table index = position + 1 (0: the base)
        self._tables = tables         # per layer: (A [n+1, r, in], B [n+1, out, r])
        self._adapter_rows = False    # does the selected batch have rows with an adapter?
        self._rows: list | None = None  # per layer: (A_rows^T [k, in, r], B_rows^T [k, r, out]) (ungrouped use only)
        self._group_tables: list[tuple] = []  # per group of layers sharing an input: (A [n+1, R, in], B [n+1, out, R])
        self._group_rows: list = []
        self._group_parts: list[tuple] = []   # per group: (ranks, output sizes) of its projections
        self._ops_parts: dict = {}            # per group: those as the step operations take them
        self._start = 0
        self._hooks: list = []
        self._active = False
        self._gathered: dict[tuple, list] = {}

    @classmethod
    def build(cls, model) -> "MultiLora | None":
        """Tables for every adapter of ``model`` (a PeftModel), or None when some adapter needs PEFT's own path."""
        import torch
        from peft.tuners.lora import LoraLayer

        names = list(getattr(model, "peft_config", {}) or {})
        if not names:
            return None
        layers, tables = [], []
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            if getattr(module, "lora_embedding_A", None) and len(module.lora_embedding_A):
                return None
            weight = getattr(module.get_base_layer(), "weight", None)
            if weight is None or getattr(module, "fan_in_fan_out", False):
                return None
            present = [n for n in names if n in module.lora_A]
            if any(n in getattr(module, "lora_variant", {}) for n in present):
                return None  # DoRA & co. rescale the whole output, not a delta
            a_list, b_list = [], []
            for n in present:
                lin_a, lin_b = module.lora_A[n], module.lora_B[n]
                if not isinstance(lin_a, torch.nn.Linear) or lin_b.bias is not None:
                    return None
                a_list.append(lin_a.weight)
                b_list.append(lin_b.weight * module.scaling[n])
            if not present:
                continue
            rank = max(a.shape[0] for a in a_list)
            in_f, out_f = a_list[0].shape[1], b_list[0].shape[0]
            dtype, device = a_list[0].dtype, a_list[0].device
            a_stack = torch.zeros(len(names) + 1, rank, in_f, dtype=dtype, device=device)
            b_stack = torch.zeros(len(names) + 1, out_f, rank, dtype=dtype, device=device)
            for n, a, b in zip(present, a_list, b_list):
                i = names.index(n) + 1
                a_stack[i, : a.shape[0]] = a.detach()
                b_stack[i, :, : b.shape[1]] = b.detach()
            layers.append(module)
            tables.append((a_stack, b_stack))
        return cls(layers, names, tables) if layers else None

    def group(self, positions: list, out_sizes: list[int]) -> int | None:
        """Projections that read the same input (q, k, v; gate, up), computed side by side as one output: their
        deltas as one, with ``A`` stacked over the ranks and ``B`` block-diagonal (the extra terms are exact zeros).
        ``positions`` are layer positions, None for a projection without LoRA; returns the group's number for
        :meth:`add_group_delta`, or None when no projection of the group has LoRA.
        Once a group is made, this object serves :meth:`add_group_delta` only (the forward that groups calls that,
        for every projection), so :meth:`select` gathers the groups' tables and not the layers'."""
        import torch

        if all(p is None for p in positions):
            return None
        present = [self._tables[p] for p in positions if p is not None]
        dtype, device = present[0][0].dtype, present[0][0].device
        entries, in_features = present[0][0].shape[0], present[0][0].shape[2]
        ranks = [0 if p is None else self._tables[p][0].shape[1] for p in positions]
        a_cat = torch.zeros(entries, sum(ranks), in_features, dtype=dtype, device=device)
        b_cat = torch.zeros(entries, sum(out_sizes), sum(ranks), dtype=dtype, device=device)
        rank_at = out_at = 0
        for position, rank, size in zip(positions, ranks, out_sizes):
            if position is not None:
                a, b = self._tables[position]
                a_cat[:, rank_at: rank_at + rank] = a
                b_cat[:, out_at: out_at + size, rank_at: rank_at + rank] = b
            rank_at, out_at = rank_at + rank, out_at + size
        self._group_tables.append((a_cat, b_cat))
        self._group_parts.append((ranks, list(out_sizes)))
        self._gathered.clear()
        return len(self._group_tables) - 1

    def index(self, adapter: str | None) -> int:
        return 0 if adapter is None else self.names.index(adapter) + 1

    def select(self, adapters: Sequence[str | None]) -> None:
        """Gather the tables for a batch whose row ``i`` uses ``adapters[i]``. Rows must be ordered base rows
        first (the scheduler keeps them so): the delta is computed for the contiguous tail of adapter rows."""
        import torch

        idx = tuple(self.index(a) for a in adapters)
        first = next((i for i, v in enumerate(idx) if v), len(idx))
        if any(v == 0 for v in idx[first:]):
            raise ValueError("rows with adapters must follow the base rows")
        self._start = first
        self._adapter_rows = first < len(idx)
        if not self._adapter_rows:
            return
        key = idx[first:]
        if key not in self._gathered:
            if len(self._gathered) >= 4:  # a prefill row and the running batch alternate: keep a few
                self._gathered.pop(next(iter(self._gathered)))
            gather = torch.tensor(key, dtype=torch.long, device=self._tables[0][0].device)

            def rows_of(tables, a_transposed: bool):
                return [(a.index_select(0, gather).transpose(1, 2).contiguous() if a_transposed
                         else a.index_select(0, gather).contiguous(),
                         b.index_select(0, gather).transpose(1, 2).contiguous()) for a, b in tables]

            # Gather what is read: with groups (the lean forward) their tables, else the layers' (the hooks). A
            # group's A stays [rows, R, in], as the step operations read it (torch reads a transposed view).
            self._gathered[key] = ((None, rows_of(self._group_tables, False)) if self._group_tables
                                   else (rows_of(self._tables, True), []))
        self._rows, self._group_rows = self._gathered[key]

    def add_delta(self, position: int, x, output) -> None:
        """``output`` (the base projection of ``x`` by the layer at ``position``) += each selected row's LoRA delta."""
        if self._adapter_rows:
            self._add(*self._rows[position], x, output)

    def add_group_delta(self, group: int, x, output, ops=None) -> None:
        """As :meth:`add_delta`, for a :meth:`group` whose projections' outputs lie side by side in ``output``;
        through ``ops`` (:class:`~workbench.infer.cpu_kernel.StepOps`) where given and the tensors suit it."""
        if not self._adapter_rows:
            return
        a, b_t = self._group_rows[group]
        if (ops is not None and x.dtype == output.dtype and ops.takes_lora(x.dtype, a.dtype, a.shape[1])
                and x.is_contiguous() and output.is_contiguous()):
            if group not in self._ops_parts:
                self._ops_parts[group] = ops.lora_parts(*self._group_parts[group])
            ops.lora_delta_unchecked(x[self._start:], a, b_t, output[self._start:], self._ops_parts[group])
        else:
            self._add(a.transpose(1, 2), b_t, x, output)

    def _add(self, a_t, b_t, x, output) -> None:
        import torch

        x = x[self._start:]
        if x.dtype != a_t.dtype:
            x = x.to(a_t.dtype)
        # The delta stays in the adapter's dtype and is rounded once with the sum, as PEFT does (and the step
        # operations): a half-precision output is not rounded twice.
        output[self._start:] += torch.bmm(torch.bmm(x, a_t), b_t)

    def _hook(self, position: int):
        def add_delta(module, args, output):
            if not self._active or not self._adapter_rows:
                return None
            self.add_delta(position, args[0], output)
            return output

        return add_delta

    def __enter__(self) -> "MultiLora":
        if not self._hooks:
            self._hooks = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        for layer in self.layers:
            layer._disable_adapters = True  # PEFT computes only the base projection; the hooks add the deltas
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        for layer in self.layers:
            layer._disable_adapters = False

    def close(self) -> None:
        """Remove the hooks (the adapters changed, or the model is going away)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
