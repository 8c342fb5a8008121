"""Example workflows: build ComfyUI UI-format graphs from a compact spec, and turn them into API prompts.

The UI format (what the frontend saves and loads, and what ``example_workflows/`` holds) stores
widget values positionally, so both directions need the node definitions from ``/object_info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass
class Node:
    """One node of a spec: ``links`` maps an input name to ``(source node key, output slot)``."""

    key: str
    type: str
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)
    title: str | None = None


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    inputs = info.get("input", {})
    order = info.get("input_order", {})
    result = []
    for section in ("required", "optional"):
        names = order.get(section) or list(inputs.get(section, {}))
        result += [(name, inputs[section][name]) for name in names if name in inputs.get(section, {})]
    return result


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control(spec: list, name: str = "") -> bool:
    """The frontend adds a 'control after generate' widget value after such inputs (and any INT named seed)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(options.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def _default(spec: list):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else ""
    if spec[0] == "COMBO":
        values = options.get("options") or [""]
        return values[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])


def build_ui_workflow(nodes: list[Node], object_info: dict) -> dict:
    """A UI-format workflow (nodes laid out left to right in list order)."""
    ids = {n.key: i + 1 for i, n in enumerate(nodes)}
    links, ui_nodes = [], []
    outputs: dict[tuple[int, int], list[int]] = {}
    for node in nodes:
        for slot_name, (source, slot) in node.links.items():
            link_id = len(links) + 1
            out_type = object_info[_type_of(nodes, source)]["output"][slot]
            links.append([link_id, ids[source], slot, ids[node.key], slot_name, out_type])
            outputs.setdefault((ids[source], slot), []).append(link_id)
    for index, node in enumerate(nodes):
        ui_nodes.append(_ui_node(node, ids[node.key], index, object_info[node.type], links, outputs))
    for link in links:  # target slot names -> indices of the target node's inputs list
        target = ui_nodes[link[3] - 1]
        link[4] = next(i for i, item in enumerate(target["inputs"]) if item["name"] == link[4])
    return {
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
        "version": 0.4,
    }


def _type_of(nodes: list[Node], key: str) -> str:
    return next(n.type for n in nodes if n.key == key)


def _ui_node(node: Node, node_id: int, index: int, info: dict, links: list, outputs: dict) -> dict:
    inputs, values = [], []
    link_by_name = {link[4]: link[0] for link in links if link[3] == node_id}
    for name, spec in _ordered_inputs(info):
        if name in link_by_name or not _is_widget(spec):
            kind = spec[0] if isinstance(spec[0], str) else "COMBO"
            inputs.append({"name": name, "type": kind, "link": link_by_name.get(name)})
            continue
        values.append(node.widgets.get(name, _default(spec)))
        if _has_control(spec, name):
            values.append("fixed")
    outs = [
        {"name": name, "type": kind, "links": outputs.get((node_id, slot), []), "slot_index": slot}
        for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"], strict=False))
    ]
    ui = {
        "id": node_id,
        "type": node.type,
        "pos": [60 + 360 * index, 80 + 40 * (index % 3)],
        "size": [320, 200],
        "flags": {},
        "order": index,
        "mode": 0,
        "inputs": inputs,
        "outputs": outs,
        "properties": {"Node name for S&R": node.type},
        "widgets_values": values,
    }
    if node.title:
        ui["title"] = node.title
    return ui


def ui_to_api(workflow: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """Turn a UI-format workflow into an API prompt; ``overrides[node_id][input] = value`` replaces widgets."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]
        linked = {item["name"]: links[item["link"]] for item in node.get("inputs", []) if item.get("link")}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec in _ordered_inputs(info):
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
            elif _is_widget(spec) and values:
                inputs[name] = values.pop(0)
                if _has_control(spec, name) and values:
                    values.pop(0)
        inputs.update((overrides or {}).get(str(node["id"]), {}))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


TEXT_ENCODER_LOADERS = {"CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"}
STANDIN_NODE = "HadaKronTestSyntheticConditioning"


def with_standin_text(prompt: dict, text_dim: int = 4096) -> dict:
    """Replace text encoding by the demo's documented stand-in (no text encoder can be tiny).

    ``CLIPTextEncode`` nodes become ``HadaKronTestSyntheticConditioning`` (seeded random
    conditioning of the model's text width), CLIP loaders are dropped, and inputs that pointed
    at a dropped node are removed (every HadaKron node takes CLIP optionally).
    """
    out = {}
    dropped = {node_id for node_id, node in prompt.items() if node["class_type"] in TEXT_ENCODER_LOADERS}
    for node_id, node in prompt.items():
        if node_id in dropped:
            continue
        if node["class_type"] == "CLIPTextEncode":
            seed = sum(map(ord, str(node["inputs"].get("text", "")))) % (2**31)
            out[node_id] = {"class_type": STANDIN_NODE, "inputs": {"seed": seed, "length": 8, "dim": text_dim}}
            continue
        inputs = {k: v for k, v in node["inputs"].items() if not (isinstance(v, list) and v and v[0] in dropped)}
        out[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    return out
