"""TFLite step models built from primitive ops and converted with TensorFlow's converter.

The step graph ``(x_t, h_0, c_0, ...) -> (y, h_0_out, c_0_out, ...)`` is traced from the
network's weights as a ``tf.function`` using only matmul, sigmoid, tanh, multiply, add and
split (plus the head's activations), which the converter maps to FULLY_CONNECTED,
LOGISTIC, TANH, MUL, ADD and SPLIT: ops that quantize to int8 and exist on the Edge TPU.
Each LSTM gate's pre-activation is ``FC(x) + FC(h)`` (two fully-connected ops per gate, the
bias on the one fed by ``x``) rather than ``FC(concat(x, h))``: that way the state input ``h``
feeds nothing but bias-less FCs and the state output keeps a free quantization scale, which
:func:`tie_state_quantization` exploits; one pair per gate gives each gate a grid of its own.

Quantization variants: ``float32``, ``float16`` (float16 weights), ``dynamic`` (dynamic-range:
int8 weights, float activations, no calibration), ``int8`` (full integer,
int8 inputs and outputs, builtin int8 ops only, calibrated on recorded ``(x, h, c)``), and
``int16x8`` (int16 activations, int8 weights) where the converter accepts the graph.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConversionError
from edgelstm.model.network import DenseLayer, EmbeddingLayer, GRULayer, LSTMLayer, Network
from .state_plan import ResidualCellPlan, StatePlan, group_columns, permuted_network
from .tflite_float_tables import embedding_tables, keep_tables_float
from .tflite_output_copies import average_output_copies, offset_output_copies, output_copies
from .tflite_ops import TFOps, activation, convert_function, quant_params_for_range, tensorflow
from .window_graph import gru_cell, per_timestep


def build_step_function(network: Network, plan: StatePlan, batch: int = 1, per_gate: bool = False, copies: int = 1):
    """A concrete ``tf.function`` computing one step, outputs keyed by ``plan.output_names()``,
    and the module that owns it (the converter takes its signature from there). ``per_gate``: the
    full-integer graph, each gate's pre-activation on a grid of its own (:func:`_gate_preactivation`);
    otherwise one FC pair per cell-state group for all four gates and a SPLIT (fewer ops).
    ``copies``: the last (linear) Dense layer computed that many times, output by output
    (:mod:`.tflite_output_copies`)."""
    tf = tensorflow()
    net = permuted_network(network, plan)
    units_of = plan.tensor_units()
    names = plan.state_names()
    token = network.input_kind == "token"
    residual = isinstance(plan, ResidualCellPlan)
    last_name = network.layers[-1].name
    specs = [tf.TensorSpec([batch, 1], tf.int32, name="x") if token else tf.TensorSpec([batch, network.n_features], tf.float32, name="x")]
    specs += [tf.TensorSpec([batch, len(units_of[name])], tf.float32, name=name) for name in names]

    def step(x, *state_list):
        state = dict(zip(names, state_list))
        outputs = {}
        ops = TFOps(tf, per_gate=per_gate)
        counters = {"k": 0, "d": 0}

        def apply(layer, inputs):
            value = inputs[0]
            if isinstance(layer, LSTMLayer):
                k = counters["k"]
                counters["k"] += 1
                return _lstm_step(tf, layer, value, state, outputs, plan, k, residual, per_gate)
            if isinstance(layer, GRULayer):
                k = counters["k"]
                counters["k"] += 1
                if residual and f"h_{k}" in plan.hi_grid:  # h = h_hi + h_lo, one FC per gate
                    return _residual_gru(tf, layer, value, state, outputs, k)
                value = gru_cell(ops, layer, value, state[f"h_{k}"])  # the window graph's GRU step
                outputs[f"h_{k}_out"] = value
                return value
            if isinstance(layer, DenseLayer):
                d = counters["d"]
                counters["d"] += 1
                repeat = copies if layer.name == last_name else 1
                dense = tf.add(tf.matmul(value, tf.constant(np.repeat(layer.kernel, repeat, axis=1))),
                               tf.constant(np.repeat(layer.bias, repeat)), name=f"dense__D{d}")
                return activation(tf, layer.activation, dense)
            if isinstance(layer, EmbeddingLayer):  # GATHER: one row of the table per token id
                return tf.gather(tf.constant(layer.table), tf.reshape(value, [-1]))
            return per_timestep(ops, layer, inputs)  # merges, LayerNormalization, Activation

        outputs["y"] = net.evaluate(x, apply)
        return {name: outputs[name] for name in plan.output_names()}

    module = tf.Module()
    module.step = tf.function(step, input_signature=specs)
    return module.step.get_concrete_function(), module


def _lstm_step(tf, layer: LSTMLayer, value, state: dict, outputs: dict, plan: StatePlan, k: int, residual: bool,
               per_gate: bool):
    """One LSTM step over the plan's cell-state groups; writes ``h_k_out`` and the cells' outputs."""
    h = state[f"h_{k}"]
    gate, act = layer.recurrent_activation, layer.activation
    h_parts, start = [], 0
    for j, (cell_name, size) in enumerate(zip(plan.cell_names(k), plan.layers[k].sizes)):
        columns = group_columns(layer.units, start, size)
        tag = f"__L{k}g{j}"  # tensor names the error attribution reads (ROLE__L<layer>g<group>)
        # residual cells negate the f columns: the gate then gives 1 - f, exactly 0 when f = 1
        sign = np.ones(4 * size, np.float32)
        if residual:
            sign[size : 2 * size] = -1.0
        if per_gate:
            i, f, g, o = [_gate_preactivation(tf, value, h, layer, columns[q * size:(q + 1) * size],
                                              sign[q * size:(q + 1) * size], tag) for q in range(4)]
        else:
            i, f, g, o = tf.split(_gate_preactivation(tf, value, h, layer, columns, sign, tag), 4, axis=1)
        update = tf.multiply(activation(tf, gate, i), activation(tf, act, g), name="ig" + tag)
        if residual:
            c_tanh = _residual_cell(tf, activation(tf, gate, f), update, state, outputs, cell_name, tag)
        else:
            forget = tf.multiply(activation(tf, gate, f), state[cell_name], name="fc" + tag)
            c_tanh = tf.add(forget, update, name="c" + tag)
            outputs[f"{cell_name}_out"] = c_tanh
        h_parts.append(tf.multiply(activation(tf, gate, o), activation(tf, act, c_tanh), name="h" + tag))
        start += size
    value = h_parts[0] if len(h_parts) == 1 else tf.concat(h_parts, axis=1)
    outputs[f"h_{k}_out"] = value
    return value


#: tanh's int8 output (scale 1/128) is within half a step of +-1 beyond this: atanh(1 - 1/256)
TANH_FLAT = 3.12


def _gate_preactivation(tf, x, h, layer, columns, sign, tag):
    """One gate's (or, given every gate's ``columns``, all four gates') pre-activation ``FC(x) + bias + FC(h)``.

    Each gate gets its own FCs (not one FC for all four and a SPLIT, whose outputs share one grid):
    the gates' ranges differ (a forget gate's bias may put it at +-6 while the others stay within
    +-3), so a shared grid is as coarse as the widest gate needs. Measured, full int8, one change
    (``python bench/int8_fidelity.py --no-peers``): C-MAPSS LSTM 64/32 3.25 -> 2.76 %, PyTorch LSTM
    window 3.06 -> 2.59 %, uncapped RUL LSTM 2.95 -> 2.35 %, failure classifier 4.28 -> 3.88 %,
    char LSTM 5.62 -> 5.06 %."""
    from_input = tf.add(tf.matmul(x, tf.constant(layer.kernel[:, columns] * sign)),
                        tf.constant(layer.bias[columns] * sign), name="zx" + tag)
    from_state = tf.matmul(h, tf.constant(layer.recurrent_kernel[:, columns] * sign), name="zh" + tag)
    return tf.add(from_input, from_state, name="z" + tag)


def _packed(parsed, size_hint: int) -> bytes:
    """A parsed (and rewritten) TFLite model back to flatbuffer bytes: what every rewrite here ends with."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(parsed.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _residual_gru(tf, layer: GRULayer, x, state: dict, outputs: dict, k: int):
    """One GRU step ``h' = h + (1 - z) (hh - h)`` with ``h = h_hi + h_lo`` (the states ``h_k`` and
    ``h_k_lo``), updated like a residual cell (:func:`_residual_cell`): the change is formed on its own
    small grid and added to the residual; only whole hi steps (the carry, on the hi grid) move into
    ``h_hi``, so updates smaller than a hi step are not rounded away at every step. One FC per gate
    and per source (each pre-activation on its own grid); tensors named ``ROLE__L<k>g<gate>`` (gate
    0: the update gate, computed negated so its sigmoid is ``1 - z``, exactly 0 when z = 1; 1: reset;
    2: candidate). The FCs and ``r * h`` read ``h_hi`` (the residual is below half a hi step).
    Measured against the window graph's single-grid step (FD001 test engines, full int8, every step):
    tfkeras_gru_reset_before 6.02 -> 4.98 %, gru256x128_stream 4.81 -> 4.39 %; with one FC per source
    and a SPLIT (one grid for all gates) 5.39 and 4.82 %, at the same step time. The per-gate graph
    without the residual was worse than the window graph's (10.2 %), so a single ``h`` keeps that one."""
    units, gate, act = layer.units, layer.recurrent_activation, layer.activation
    name = f"h_{k}"
    h = state[name]
    kernel, bias, recurrent, recurrent_bias = layer.kernel, layer.bias, layer.recurrent_kernel, layer.recurrent_bias
    cols = [slice(g * units, (g + 1) * units) for g in range(3)]
    pre = []
    for g, sign in ((0, -1.0), (1, 1.0)):  # update (negated) and reset gates: FC(x) + bias + FC(h)
        from_input = tf.add(tf.matmul(x, tf.constant(sign * kernel[:, cols[g]])),
                            tf.constant(sign * (bias[cols[g]] + recurrent_bias[cols[g]])), name=f"zx__L{k}g{g}")
        from_state = tf.matmul(h, tf.constant(sign * recurrent[:, cols[g]]), name=f"zh__L{k}g{g}")
        pre.append(tf.add(from_input, from_state, name=f"z__L{k}g{g}"))
    keep_not, reset = activation(tf, gate, pre[0]), activation(tf, gate, pre[1])  # 1 - z, r
    from_input = tf.add(tf.matmul(x, tf.constant(kernel[:, cols[2]])), tf.constant(bias[cols[2]]), name=f"zx__L{k}g2")
    if layer.reset_after:
        from_state = tf.add(tf.matmul(h, tf.constant(recurrent[:, cols[2]])), tf.constant(recurrent_bias[cols[2]]),
                            name=f"zh__L{k}g2")
        gated = tf.multiply(reset, from_state, name=f"rh__L{k}g2")
    else:  # as the window graph: no recurrent bias on the candidate
        gated = tf.matmul(tf.multiply(reset, h, name=f"rh__L{k}g2"), tf.constant(recurrent[:, cols[2]]), name=f"zh__L{k}g2")
    candidate = activation(tf, act, tf.add(from_input, gated, name=f"z__L{k}g2"))
    return _residual_gru_update(tf, keep_not, candidate, state, outputs, k)


def _residual_gru_update(tf, keep_not, candidate, state: dict, outputs: dict, k: int):
    """``h_hi, h_lo`` after ``h' = h + (1 - z) (hh - h)`` (see :func:`_residual_gru`); returns ``h_hi``."""
    name, tag = f"h_{k}", f"__L{k}g0"
    h = state[name]
    change = tf.multiply(keep_not, tf.subtract(candidate, h, name="hd" + tag), name="hu" + tag)
    h_lo = state[name + "_lo"]
    change = tf.subtract(change, tf.multiply(keep_not, h_lo, name="hm" + tag), name="hc" + tag)
    summed = tf.add(h_lo, change, name="hs" + tag)
    carry = tf.add(summed, tf.constant(1e-12, tf.float32), name="hcarry" + tag)  # on the hi grid (set_carry_grids)
    value = tf.add(h, carry, name="h" + tag)
    outputs[f"{name}_out"] = value
    outputs[f"{name}_lo_out"] = tf.subtract(summed, carry, name="hclo" + tag)
    return value


def _residual_cell(tf, keep_not, update, state: dict, outputs: dict, cell_name: str, tag: str):
    """``c = c_hi + c_lo`` updated with int8 ops only (:class:`.state_plan.ResidualCellPlan`).

    ``keep_not`` is ``1 - f``. The change of ``c`` is formed on its own small grid and added to
    the residual; the part of the residual that reaches a whole hi step (the carry, an ADD whose
    output :func:`set_carry_grids` puts on the hi grid, so the int8 kernel rounds onto it) moves
    into ``c_hi``, exactly, since both are on that grid; what is left stays in ``c_lo``.

    Returns the input of the cell's tanh: ``c_hi + c_lo`` on a grid of its own that ends where
    tanh's int8 output is flat (+-:data:`TANH_FLAT`), so a group whose cell state spans +-50 no
    longer feeds tanh its 0.2-wide hi steps (one ADD per group). Measured, full int8, one change
    after the per-gate grids: C-MAPSS LSTM 64/32 2.76 -> 2.68 %, uncapped RUL LSTM 2.35 -> 2.22 %,
    failure classifier 3.88 -> 3.25 %, char LSTM 5.06 -> 4.67 %, PyTorch LSTM window 2.59 -> 2.62 %."""
    c_hi, c_lo = state[cell_name], state[cell_name + "_lo"]
    forgotten = tf.add(tf.multiply(keep_not, c_hi), tf.multiply(keep_not, c_lo), name="m" + tag)
    change = tf.subtract(update, forgotten, name="d" + tag)
    summed = tf.add(c_lo, change, name="s" + tag)
    carry = tf.add(summed, tf.constant(1e-12, tf.float32), name="carry" + tag)  # 0 on any int8 grid: kept as its own ADD
    c_hi_new = tf.add(c_hi, carry, name="c" + tag)
    outputs[f"{cell_name}_out"] = c_hi_new
    c_lo_new = tf.subtract(summed, carry, name="clo" + tag)
    outputs[f"{cell_name}_lo_out"] = c_lo_new
    return tf.add(c_hi_new, c_lo_new, name="ct" + tag)  # on a grid clipped where tanh saturates (set_carry_grids)


def set_carry_grids(model: bytes, plan: "ResidualCellPlan") -> bytes:
    """Put each residual cell's carry tensor on its hi grid (scale of ``c_hi``, zero point 0), and the
    tanh input ``ct`` on the hi range clipped to +-:data:`TANH_FLAT` (an int8 ADD saturates there,
    where tanh's output no longer changes)."""
    from tensorflow.lite.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    tensors = parsed.subgraphs[0].tensors
    grids = {}
    for k in range(len(plan.layers)):
        for j, cell in enumerate(plan.cell_names(k)):
            grids[f"carry__L{k}g{j}"] = (plan.hi_grid[cell][0], 0)
            lo, hi = plan.hi_ranges[cell]
            grids[f"ct__L{k}g{j}"] = quant_params_for_range(max(lo, -TANH_FLAT), min(hi, TANH_FLAT), "int8")
        if f"h_{k}" in plan.hi_grid:  # a GRU's residual hidden state
            grids[f"hcarry__L{k}g0"] = (plan.hi_grid[f"h_{k}"][0], 0)
    found = set()
    for tensor in tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        for part in name.split(";"):
            key = part.rsplit("/", 1)[-1]
            if key in grids and tensor.quantization is not None and tensor.quantization.scale is not None:
                scale, zero_point = grids[key]
                tensor.quantization.scale = [float(scale)]
                tensor.quantization.zeroPoint = [int(zero_point)]
                found.add(key)
    if set(grids) - found:
        raise ConversionError(f"residual cell state: carry tensors {sorted(set(grids) - found)} not found in the converted model")
    return _packed(parsed, len(model))


def convert(network: Network, plan: StatePlan, quant: str, representative=None, batch: int = 1, io: str = "quantized") -> bytes:
    """Convert the step graph to a TFLite flatbuffer.

    ``io="quantized"`` (int8 and int16x8): every input and output is integer, the canonical
    full-integer model (and the one the Edge TPU takes). ``io="stream"`` (int8 only): the
    state stays integer at the boundary but ``x`` and ``y`` are float32, with QUANTIZE and
    DEQUANTIZE ops inside the graph; the device runtime drives this one, because TFLite's
    own (de)quantize ops cost a fraction of the numpy calls that would do it outside.

    ``representative`` is a callable returning an iterable of input lists (normalised x
    and states, float32, keyed by ``plan.input_names()``); required for ``int8`` and ``int16x8``.

    An ``int8`` model of a network ending in a linear Dense layer computes its output as
    :func:`.tflite_output_copies.output_copies` offset copies (``y`` four times as wide in the
    integer-I/O model; averaged inside the stream model): see :mod:`.tflite_output_copies`.
    """
    copies = output_copies(network) if quant == "int8" else 1
    function, module = build_step_function(network, plan, batch=batch, per_gate=quant == "int8", copies=copies)
    model = convert_function(function, module, quant, representative, io=io)
    if isinstance(plan, ResidualCellPlan):
        model = set_carry_grids(model, plan)
    if quant == "dynamic":  # the Embedding table float32, not int8 on one grid (tflite_float_tables)
        model = keep_tables_float(model, embedding_tables(network))
    if copies > 1:
        model = offset_output_copies(model, copies)
        if io == "stream":
            model = average_output_copies(model, copies)
    return strip_state_quantize_ops(model, plan) if (io == "stream" and quant == "int8") else model


def signature_tensors(model: bytes) -> dict:
    """Map signature names (``x``, ``h_0``, ``y``, ``h_0_out``, ...) to tensor indices."""
    from tensorflow.lite.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    if not parsed.signatureDefs:
        raise ConversionError("converted model has no signature")
    signature = parsed.signatureDefs[0]
    mapping = {}
    for item in list(signature.inputs) + list(signature.outputs):
        mapping[item.name.decode() if isinstance(item.name, bytes) else item.name] = int(item.tensorIndex)
    return mapping


def tie_state_quantization(model: bytes, plan: StatePlan, ranges: dict) -> bytes:
    """Give each state output the exact scale and zero point of its state input.

    With both ends of the recurrence on one quantization grid, the runtime feeds int8
    state back without requantizing, so no rounding error builds up over long streams.
    The grid covers the state's range before and after every calibration step (``ranges``,
    per state tensor). The ops that read or write a state tensor (FULLY_CONNECTED without
    bias, MUL, ADD, TANH, and the CONCATENATION that joins a layer's ``h`` groups, whose
    inputs must share its grid) derive their rescaling from tensor parameters when the
    interpreter prepares them, so rewriting those parameters is exact.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    subgraph = parsed.subgraphs[0]
    tensors = subgraph.tensors
    indices = signature_tensors(model)
    producer = {int(op.outputs[0]): op for op in subgraph.operators}
    concat_code = {
        i for i, code in enumerate(parsed.operatorCodes)
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.CONCATENATION
    }

    def set_params(index: int, scale: float, zero_point: int, tensor_name: str) -> None:
        tensor = tensors[index]
        if tensor.quantization is None or tensor.quantization.scale is None:
            raise ConversionError(f"state tensor '{tensor_name}' is not quantized")
        tensor.quantization.scale = [scale]
        tensor.quantization.zeroPoint = [zero_point]

    for name in plan.state_names():
        lo, hi = ranges[name]
        dtype = "int16" if tensors[indices[name]].type == schema.TensorType.INT16 else "int8"
        scale, zero_point = quant_params_for_range(lo, hi, dtype)
        set_params(indices[name], scale, zero_point, name)
        out_index = indices[f"{name}_out"]
        set_params(out_index, scale, zero_point, f"{name}_out")
        op = producer.get(out_index)
        if op is not None and op.opcodeIndex in concat_code:
            for part in op.inputs:
                set_params(int(part), scale, zero_point, f"{name}_out part")
    return _packed(parsed, len(model))


def strip_state_quantize_ops(model: bytes, plan: StatePlan) -> bytes:
    """Make the state tensors integer at the model boundary of a float-I/O int8 model.

    The converter puts a QUANTIZE op after every float input and a DEQUANTIZE op before
    every float output. For each state tensor this removes that pair and makes the integer
    tensor itself the model's input (or output), exactly what the converter does for all
    of them when asked for integer I/O; ``x`` and ``y`` keep their float boundary.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    subgraph = parsed.subgraphs[0]
    signature = parsed.signatureDefs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in parsed.operatorCodes]
    by_name = {}
    for item in list(signature.inputs) + list(signature.outputs):
        by_name[item.name.decode() if isinstance(item.name, bytes) else item.name] = item
    remove = set()
    replace_inputs, replace_outputs = {}, {}
    for name in plan.state_names():
        float_in = by_name[name].tensorIndex
        consumers = [i for i, op in enumerate(subgraph.operators) if float_in in list(op.inputs)]
        if len(consumers) != 1 or codes[subgraph.operators[consumers[0]].opcodeIndex] != schema.BuiltinOperator.QUANTIZE:
            raise ConversionError(f"state input '{name}' is not read through one QUANTIZE op")
        quantized = int(subgraph.operators[consumers[0]].outputs[0])
        remove.add(consumers[0])
        replace_inputs[float_in] = quantized
        by_name[name].tensorIndex = quantized
        float_out = by_name[f"{name}_out"].tensorIndex
        producers = [i for i, op in enumerate(subgraph.operators) if float_out in list(op.outputs)]
        if len(producers) != 1 or codes[subgraph.operators[producers[0]].opcodeIndex] != schema.BuiltinOperator.DEQUANTIZE:
            raise ConversionError(f"state output '{name}_out' is not written through one DEQUANTIZE op")
        quantized = int(subgraph.operators[producers[0]].inputs[0])
        remove.add(producers[0])
        replace_outputs[float_out] = quantized
        by_name[f"{name}_out"].tensorIndex = quantized
    subgraph.inputs = [replace_inputs.get(int(i), int(i)) for i in subgraph.inputs]
    subgraph.outputs = [replace_outputs.get(int(i), int(i)) for i in subgraph.outputs]
    subgraph.operators = [op for i, op in enumerate(subgraph.operators) if i not in remove]
    return _packed(parsed, len(model))


def list_ops(model: bytes) -> list:
    """Builtin op names used by the model, in graph order, without duplicates."""
    from tensorflow.lite.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    seen = []
    for op in parsed.subgraphs[0].operators:
        code = parsed.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = names.get(builtin, f"CUSTOM:{code.customCode}")
        if name not in seen:
            seen.append(name)
    return seen
