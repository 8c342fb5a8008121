"""Shared schema pieces of the nodes that write an adapter file (convert and merge_lowrank)."""

from __future__ import annotations

from ._comfy import io, schema


def file_node_schema(**fields) -> io.Schema:
    """Schema of a node that writes one file and returns its ``path`` and a ``report``.

    ``fields``: ``node_id``, ``display_name``, ``category``, ``description`` and ``inputs``. It is an
    output node: writing the file is its effect, so it may run without anything after it.
    """
    outputs = [io.String.Output(display_name="path"), io.String.Output(display_name="report")]
    return schema(is_output_node=True, outputs=outputs, **fields)
