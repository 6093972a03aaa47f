"""What the compiled decode step costs, read from the graph inductor compiles (no timing): after
inductor's post-grad passes (reinplacing included), no node writes out of place a tensor as large
as one layer's KV cache, and every State buffer larger than one value per row is updated in place
(no fresh copy written back into it).

The helpers take any step function and its arguments, so a step with more state (a recurrent
state beside the KV cache) is checked by passing its State and a threshold (step_costs)."""
import dataclasses

import pytest
import torch

import decode as D
import model as M
import rollout as R


def post_grad_graph(step, *args) -> torch.fx.Graph:
    """Compile `step(*args)` with inductor (fullgraph, static shapes) and return its graph as left
    by inductor's post-grad passes, which end with reinplacing and the decomposition of
    auto_functionalized ops. The hook wraps compile_fx's post_grad_passes (its name from torch 2.5
    on); the FX caches are off so the passes run; a hook that never fires fails the test."""
    import torch._inductor.compile_fx as compile_fx
    graphs, original = [], compile_fx.post_grad_passes

    def spy(gm, *a, **k):
        original(gm, *a, **k)
        graphs.append(gm.graph)

    patches = {"fx_graph_cache": False}
    functorch = torch._functorch.config
    cache_flag = getattr(functorch, "enable_autograd_cache", None)
    torch._dynamo.reset()
    compile_fx.post_grad_passes = spy
    try:
        if cache_flag is not None:
            functorch.enable_autograd_cache = False
        with torch._inductor.config.patch(patches):
            torch.compile(step, backend="inductor", fullgraph=True, dynamic=False)(*args)
    finally:
        compile_fx.post_grad_passes = original
        if cache_flag is not None:
            functorch.enable_autograd_cache = cache_flag
        torch._dynamo.reset()
    assert len(graphs) == 1, f"expected one compiled graph, the hook saw {len(graphs)}"
    return graphs[0]


def _tensors(val):
    vals = val if isinstance(val, (list, tuple)) else [val]
    return [v for v in vals if isinstance(v, torch.Tensor)]


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def fresh_outputs(graph: torch.fx.Graph):
    """(node, tensor) for every new tensor an op node writes: neither an in-place op nor a view,
    and an output that aliases none of the node's tensor inputs (a reshape counts only when it
    copies)."""
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target._schema.is_mutable:
            continue
        if node.target.is_view and node.target.overloadpacket != torch.ops.aten.reshape:
            continue                                                   # a view (a reshape may copy)
        inputs = [t for a in node.all_input_nodes for t in _tensors(a.meta.get("val"))]
        for out in _tensors(node.meta.get("val")):
            if not any(torch._C._is_alias_of(out, t) for t in inputs):
                yield node, out


def fresh_writes(graph: torch.fx.Graph, min_bytes: int) -> list[str]:
    """Every op node that writes a new tensor (fresh_outputs) of `min_bytes` or more."""
    return [f"{node.target} -> {tuple(out.shape)} {out.dtype} ({_nbytes(out)} bytes)"
            for node, out in fresh_outputs(graph) if _nbytes(out) >= min_bytes]


def copies_into_inputs(graph: torch.fx.Graph, max_bytes: int) -> list[str]:
    """Every copy_ into a graph input (a State buffer) of more than `max_bytes` from a tensor that
    is not that buffer itself: a buffer the step rewrote out of place and then copied back whole.
    (The copy_ of a buffer onto itself that reinplacing leaves is not lowered to a copy.)"""
    inputs = {n for n in graph.nodes if n.op == "placeholder"}
    found = []
    for node in graph.nodes:
        if node.target != torch.ops.aten.copy_.default or node.args[0] not in inputs:
            continue
        src = node.args[1]
        while isinstance(src.target, torch._ops.OpOverload) and src.target._schema.is_mutable:
            src = src.args[0]                                  # an in-place chain back to its base
        dst = node.args[0].meta["val"]
        if _nbytes(dst) > max_bytes and src is not node.args[0]:
            found.append(f"copy_ into input {tuple(dst.shape)} {dst.dtype} ({_nbytes(dst)} bytes)")
    return found


def step_costs(step, w, s, *rest, min_bytes: int | None = None) -> dict[str, list[str]]:
    """The out-of-place writes of `step(w, s, *rest)`: `cache`, fresh tensors of `min_bytes` or
    more (default: one layer's K cache, s.k[0]); `state`, State buffers of more than one long per
    row written back by a copy."""
    graph = post_grad_graph(step, w, s, *rest)
    min_bytes = _nbytes(s.k[0]) if min_bytes is None else min_bytes
    return {"cache": fresh_writes(graph, min_bytes),
            "state": copies_into_inputs(graph, 8 * s.tok.shape[0])}


def _step_inputs(folder, rows=8, length=512, new_tokens=8, sp=None, layers=2):
    """Weights of the tiny model at `folder` (random, its real shapes, its first `layers` layers)
    and a State of `rows` x `length` with a 5-token prompt, ready for decode_step."""
    hf, _ = M.load_policy(folder)
    w = D.allocate_weights(hf, torch.float32, "cpu")
    D.refresh(w, hf)
    per_layer = ("ln1", "qkv", "qkv_bias", "q_norm", "k_norm", "o", "ln2", "gate_up", "down")
    w = dataclasses.replace(w, **{f: getattr(w, f)[:layers] for f in per_layer})
    s = D.allocate_state(w, rows, length, new_tokens, D.candidates(sp, w.embed.shape[0]))
    s.key_ok[:, :5] = True
    s.col.fill_(5)
    s.pos.fill_(5)
    s.j.fill_(1)
    return w, s


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("top_k", [50, 0])
def test_compiled_step_writes_in_place(family, top_k, builtin, qwen3):
    """Qwen2.5-VL's and Qwen3-VL's step, top-k on and off, repetition penalty on: no fresh tensor
    as large as one layer's cache, no State buffer (cache, seen, key_ok, ids, logps) rewritten
    through a whole copy. (The step of commit 5ef68db: 2 whole-cache select_scatters per layer, seen
    scattered into a fresh (Rb, V) buffer.)"""
    sp = R.SamplingParams(top_k=top_k, repetition_penalty=1.05, max_new_tokens=8)
    w, s = _step_inputs(builtin[1] if family == "qwen2_5_vl" else qwen3, sp=sp)
    assert w.qk_norm == (family == "qwen3_vl")
    costs = step_costs(D.decode_step, w, s, sp, 0, (1,))
    assert costs == {"cache": [], "state": []}, costs


def test_the_check_sees_a_full_cache_copy():
    """The helpers against a toy step whose write goes through a view of a stacked cache (the
    pattern functionalization turns into a whole-cache select_scatter), and its in-place form on
    the base tensor."""
    cache, col, val = torch.zeros(3, 4, 64, 8), torch.tensor([5]), torch.ones(4, 1, 8)

    def through_view(cache, col, val):
        for i in range(cache.shape[0]):
            cache[i].index_copy_(1, col, val * i)

    def on_base(cache, col, val):
        layer = torch.arange(cache.shape[0])[:, None]
        cache.index_put_((layer, torch.arange(4)[None], col), val[:, 0] * layer[..., None])

    a, b = cache.clone(), cache.clone()
    through_view(a, col, val)
    on_base(b, col, val)
    assert torch.equal(a, b) and a[2, :, 5].eq(2).all()                      # the same write
    layer = _nbytes(cache[0])
    bad = post_grad_graph(through_view, cache, col, val)
    assert fresh_writes(bad, layer) and copies_into_inputs(bad, 0)
    good = post_grad_graph(on_base, cache.clone(), col, val)
    assert fresh_writes(good, layer) == [] and copies_into_inputs(good, 0) == []


def _attention_columns(graph: torch.fx.Graph) -> set[int]:
    """The last axes of every batched matmul's first operand and output: q·Kᵀ (b, g, hd) @
    (b, hd, L) -> (b, g, L) and att·V (b, g, L) @ (b, L, hd): {hd, L}, L the key columns read."""
    cols = set()
    for node in graph.nodes:
        if node.target == torch.ops.aten.bmm.default:
            cols |= {node.args[0].meta["val"].shape[-1], node.meta["val"].shape[-1]}
    return cols


def test_attention_reads_the_live_columns(builtin):
    """A 768-column cache with 256 live columns: the compiled step's attention matmuls have 256
    key columns, not 768 (without `live`: 768); eager, the step's tokens and cache are the same
    with and without `live`, its log-probs within 1e-6."""
    sp = R.SamplingParams(top_k=50, repetition_penalty=1.05, max_new_tokens=8)
    w, s = _step_inputs(builtin[1], length=768, sp=sp)
    live = post_grad_graph(D.decode_step, w, s, sp, 0, (1,), 256)
    assert _attention_columns(live) == {w.head_dim, 256}
    whole = post_grad_graph(D.decode_step, w, s, sp, 0, (1,))
    assert _attention_columns(whole) == {w.head_dim, 768}
    g = torch.Generator().manual_seed(0)
    s.k.normal_(generator=g)
    s.v.normal_(generator=g)
    s.key_ok[:, :100] = True
    s.col.fill_(100)
    s.noise.exponential_(generator=g)
    copies = {f: t.clone() for f, t in vars(s).items() if isinstance(t, torch.Tensor)}
    a, b = dataclasses.replace(s, **copies), s
    for _ in range(4):
        D.decode_step(w, a, sp, 0, (1,), 256)
        D.decode_step(w, b, sp, 0, (1,))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.k, b.k) and torch.equal(a.seen, b.seen)
    assert (a.logps - b.logps).abs().max() < 1e-6


def test_static_addresses_are_marked_without_a_guard(monkeypatch):
    """decode._mark_static passes guard=False where torch's mark_static_address takes it (a guarded
    tensor is kept alive by the compiled code on torch 2.7/2.8: a grown State would never free the
    old cache), and calls it plainly where it does not (older torch)."""
    calls = []

    def with_guard(t, guard=True):
        calls.append(guard)

    def without_guard(t):
        calls.append("plain")

    t = torch.zeros(2)
    monkeypatch.setattr(torch._dynamo, "mark_static_address", with_guard)
    D._mark_static(t)
    monkeypatch.setattr(torch._dynamo, "mark_static_address", without_guard)
    D._mark_static(t)
    assert calls == [False, "plain"]
